package portmap

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// UPnP IGD names.
const (
	ssdpSearchTarget = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
	// maxSSDPResponse bounds one SSDP datagram: an answer is a few hundred
	// bytes of HTTP header.
	maxSSDPResponse = 2048
)

// wanServices are the services that carry AddPortMapping, best first.
var wanServices = []string{
	"urn:schemas-upnp-org:service:WANIPConnection:2",
	"urn:schemas-upnp-org:service:WANIPConnection:1",
	"urn:schemas-upnp-org:service:WANPPPConnection:1",
}

// appendSSDPSearch appends an M-SEARCH request (UPnP Device Architecture
// 1.1 section 1.3.2) addressed to host:port (unicast to the gateway, which
// UDA 1.1 allows and miniupnpd and most IGDs answer).
func appendSSDPSearch(b []byte, hostport string) []byte {
	return fmt.Appendf(b, "M-SEARCH * HTTP/1.1\r\nHOST: %s\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: %s\r\n\r\n",
		hostport, ssdpSearchTarget)
}

// SSDPResponse is a parsed answer to an M-SEARCH.
type SSDPResponse struct {
	Location string // URL of the root device description
	ST       string // search target answered
	USN      string
	Server   string
}

// ParseSSDPResponse parses an SSDP search answer: "HTTP/1.1 200 OK" and
// header lines; LOCATION must be an http URL.
func ParseSSDPResponse(b []byte) (SSDPResponse, error) {
	var r SSDPResponse
	if len(b) > maxSSDPResponse {
		return r, fmt.Errorf("%w: ssdp: %d bytes", ErrMalformed, len(b))
	}
	lines := strings.Split(string(b), "\n")
	status := strings.Fields(strings.TrimRight(lines[0], "\r"))
	if len(status) < 2 || !strings.HasPrefix(status[0], "HTTP/1.") || status[1] != "200" {
		return r, fmt.Errorf("%w: ssdp: status line %.40q", ErrMalformed, lines[0])
	}
	for _, l := range lines[1:] {
		l = strings.TrimRight(l, "\r")
		if l == "" {
			break
		}
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			return r, fmt.Errorf("%w: ssdp: header line %.40q", ErrMalformed, l)
		}
		v = strings.TrimSpace(v)
		switch strings.ToUpper(strings.TrimSpace(k)) {
		case "LOCATION":
			r.Location = v
		case "ST":
			r.ST = v
		case "USN":
			r.USN = v
		case "SERVER":
			r.Server = v
		}
	}
	u, err := url.Parse(r.Location)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return r, fmt.Errorf("%w: ssdp: location %.80q", ErrMalformed, r.Location)
	}
	return r, nil
}

// IGDService is the WAN connection service a device description offers.
type IGDService struct {
	Type         string // e.g. urn:schemas-upnp-org:service:WANIPConnection:1
	ControlURL   string // as written in the description (maybe relative)
	FriendlyName string // of the root device
}

type xmlDevice struct {
	FriendlyName string       `xml:"friendlyName"`
	Services     []xmlService `xml:"serviceList>service"`
	Devices      []xmlDevice  `xml:"deviceList>device"`
}

type xmlService struct {
	ServiceType string `xml:"serviceType"`
	ControlURL  string `xml:"controlURL"`
}

// ParseDeviceDescription finds the best WAN connection service (WANIPConnection
// 2, then 1, then WANPPPConnection 1) in a UPnP root device description.
func ParseDeviceDescription(b []byte) (IGDService, error) {
	var root struct {
		Device xmlDevice `xml:"device"`
	}
	if err := xml.NewDecoder(bytes.NewReader(b)).Decode(&root); err != nil {
		return IGDService{}, fmt.Errorf("%w: device description: %v", ErrMalformed, err)
	}
	found := map[string]string{}
	var walk func(d *xmlDevice, depth int)
	walk = func(d *xmlDevice, depth int) {
		if depth > 8 { // IGD nests three deep; more is not a router
			return
		}
		for _, s := range d.Services {
			t := strings.TrimSpace(s.ServiceType)
			if _, ok := found[t]; !ok {
				found[t] = strings.TrimSpace(s.ControlURL)
			}
		}
		for i := range d.Devices {
			walk(&d.Devices[i], depth+1)
		}
	}
	walk(&root.Device, 0)
	for _, t := range wanServices {
		if c := found[t]; c != "" {
			return IGDService{Type: t, ControlURL: c, FriendlyName: strings.TrimSpace(root.Device.FriendlyName)}, nil
		}
	}
	return IGDService{}, fmt.Errorf("%w: device description: no WAN connection service", ErrMalformed)
}

// appendSOAPRequest appends the SOAP envelope of action on service with
// args in order (UPnP Device Architecture 1.1 section 3.2.1).
func appendSOAPRequest(b []byte, service, action string, args [][2]string) []byte {
	b = append(b, `<?xml version="1.0"?>`+"\r\n"+
		`<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>`...)
	b = fmt.Appendf(b, `<u:%s xmlns:u="%s">`, action, service)
	for _, a := range args {
		b = fmt.Appendf(b, "<%s>", a[0])
		var esc bytes.Buffer
		_ = xml.EscapeText(&esc, []byte(a[1]))
		b = append(b, esc.Bytes()...)
		b = fmt.Appendf(b, "</%s>", a[0])
	}
	return fmt.Appendf(b, `</u:%s></s:Body></s:Envelope>`, action)
}

// ParseSOAPResponse parses the SOAP answer to action: the out arguments
// of "<u:ACTIONResponse>" by name, or, for a SOAP fault, a *ResultError
// with the UPnPError's errorCode and errorDescription.
func ParseSOAPResponse(b []byte, action string) (map[string]string, error) {
	d := xml.NewDecoder(bytes.NewReader(b))
	out := map[string]string{}
	var (
		inResponse, inFault bool
		field               string
		text                strings.Builder
		code                = -1
		desc                string
		depth               int
	)
	for {
		tok, err := d.Token()
		if err != nil {
			break
		}
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			if depth > 16 {
				return nil, fmt.Errorf("%w: soap: too deep", ErrMalformed)
			}
			switch {
			case t.Name.Local == action+"Response":
				inResponse = true
			case t.Name.Local == "UPnPError":
				inFault = true
			case inResponse || inFault:
				field = t.Name.Local
				text.Reset()
			}
		case xml.CharData:
			if field != "" && text.Len()+len(t) <= 1024 {
				text.Write(t)
			}
		case xml.EndElement:
			depth--
			if field != "" && t.Name.Local == field {
				v := strings.TrimSpace(text.String())
				switch {
				case inFault && field == "errorCode":
					if n, err := strconv.Atoi(v); err == nil {
						code = n
					}
				case inFault && field == "errorDescription":
					desc = v
				case inResponse && len(out) < 32:
					out[field] = v
				}
				field = ""
			}
			if t.Name.Local == action+"Response" {
				return out, nil
			}
		}
	}
	if code >= 0 {
		return nil, &ResultError{Protocol: UPnP, Code: code, Text: desc}
	}
	return nil, fmt.Errorf("%w: soap: no %sResponse", ErrMalformed, action)
}

// resolveControlURL resolves a control URL against the description's URL
// and checks that it stays on the same host and port (a device may not send
// the client elsewhere).
func resolveControlURL(base *url.URL, control string) (*url.URL, error) {
	ref, err := url.Parse(control)
	if err != nil {
		return nil, fmt.Errorf("%w: control url %.80q", ErrMalformed, control)
	}
	u := base.ResolveReference(ref)
	if u.Scheme != "http" || u.Host != base.Host {
		return nil, fmt.Errorf("%w: control url %.80q leaves %s", ErrMalformed, control, base.Host)
	}
	return u, nil
}
