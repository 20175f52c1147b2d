package portmap

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
)

// upnpState is what a UPnP mapping needs to renew and delete itself.
type upnpState struct {
	location string
	service  IGDService
}

// UPnP fault codes the client reacts to (WANIPConnection:2 section 2.4.16).
const (
	upnpConflict      = 718 // ConflictInMappingEntry
	upnpOnlyPermanent = 725 // OnlyPermanentLeasesSupported
)

// discoverUPnP sends an M-SEARCH to the gateway and fetches the device
// description its answer points to; the LOCATION must be on the gateway.
func (c *Client) discoverUPnP(ctx context.Context) (string, IGDService, error) {
	host := netip.AddrPortFrom(c.cfg.Gateway, c.cfg.SSDPPort).String()
	var resp SSDPResponse
	err := c.exchange(ctx, c.cfg.SSDPPort, false, appendSSDPSearch(nil, host), func(b []byte) (bool, error) {
		r, err := ParseSSDPResponse(b)
		if err != nil {
			return false, err
		}
		if _, err := c.gatewayURL(r.Location); err != nil {
			return false, err
		}
		resp = r
		return true, nil
	})
	if err != nil {
		return "", IGDService{}, err
	}
	u, _ := c.gatewayURL(resp.Location)
	body, err := c.httpDo(ctx, http.MethodGet, u.String(), nil, nil)
	if err != nil {
		return "", IGDService{}, err
	}
	svc, err := ParseDeviceDescription(body)
	if err != nil {
		c.stats.malformed.Add(1)
		return "", IGDService{}, err
	}
	if _, err := resolveControlURL(u, svc.ControlURL); err != nil {
		c.stats.malformed.Add(1)
		return "", IGDService{}, err
	}
	return resp.Location, svc, nil
}

// gatewayURL parses an http URL and checks that its host is the gateway's
// address (a literal IP: a name would need a resolver we do not trust).
func (c *Client) gatewayURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "http" {
		return nil, fmt.Errorf("%w: url %.80q", ErrMalformed, s)
	}
	a, err := netip.ParseAddr(u.Hostname())
	if err != nil || a.Unmap() != c.cfg.Gateway {
		return nil, fmt.Errorf("%w: url %.80q is not on the gateway %v", ErrMalformed, s, c.cfg.Gateway)
	}
	return u, nil
}

// httpDo runs one bounded HTTP request to the gateway: no proxy, no
// redirects, dials only the gateway's address, at most MaxHTTPBytes of
// body, within Config.Timeout.
func (c *Client) httpDo(ctx context.Context, method, target string, body []byte, header http.Header) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil || ap.Addr().Unmap() != c.cfg.Gateway {
				return nil, fmt.Errorf("%w: dial %s: not the gateway", ErrMalformed, addr)
			}
			return c.cfg.Dial(ctx, "tcp4", addr)
		},
		DisableKeepAlives:      true,
		MaxResponseHeaderBytes: int64(c.cfg.MaxHTTPBytes / 4),
		ResponseHeaderTimeout:  c.cfg.Timeout,
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, method, target, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("portmap: upnp request: %w", err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	res, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("portmap: upnp %s %s: %w", method, target, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, int64(c.cfg.MaxHTTPBytes)+1))
	if err != nil {
		return nil, fmt.Errorf("portmap: upnp %s %s: %w", method, target, err)
	}
	if len(b) > c.cfg.MaxHTTPBytes {
		c.stats.oversize.Add(1)
		return nil, fmt.Errorf("%w: upnp answer over %d bytes", ErrMalformed, c.cfg.MaxHTTPBytes)
	}
	// SOAP faults come with status 500 and a body worth parsing.
	if res.StatusCode != http.StatusOK && res.StatusCode != http.StatusInternalServerError {
		return nil, fmt.Errorf("portmap: upnp %s %s: status %s", method, target, res.Status)
	}
	return b, nil
}

// soap calls action on the device's WAN connection service.
func (c *Client) soap(ctx context.Context, st *upnpState, action string, args [][2]string) (map[string]string, error) {
	base, err := c.gatewayURL(st.location)
	if err != nil {
		return nil, err
	}
	u, err := resolveControlURL(base, st.service.ControlURL)
	if err != nil {
		return nil, err
	}
	h := http.Header{
		"Content-Type": {`text/xml; charset="utf-8"`},
		"Soapaction":   {strconv.Quote(st.service.Type + "#" + action)},
	}
	body, err := c.httpDo(ctx, http.MethodPost, u.String(), appendSOAPRequest(nil, st.service.Type, action, args), h)
	if err != nil {
		return nil, err
	}
	out, err := ParseSOAPResponse(body, action)
	if err != nil {
		var re *ResultError
		if !errors.As(err, &re) {
			c.stats.malformed.Add(1)
		}
		return nil, err
	}
	return out, nil
}

// upnpMap reads the external address and adds (or refreshes) the mapping:
// the previous external port, else the internal port, else random ports
// when the router reports a conflict; lease 0 when it only does permanent
// leases (then Close must delete it, which it does).
func (c *Client) upnpMap(ctx context.Context, st *upnpState, port, prevExt uint16, secs uint32) (netip.AddrPort, uint32, error) {
	out, err := c.soap(ctx, st, "GetExternalIPAddress", nil)
	if err != nil {
		return netip.AddrPort{}, 0, err
	}
	ext, err := netip.ParseAddr(out["NewExternalIPAddress"])
	if err != nil || !ext.Is4() || ext.IsUnspecified() {
		c.stats.malformed.Add(1)
		return netip.AddrPort{}, 0, fmt.Errorf("%w: upnp external address %.40q", ErrMalformed, out["NewExternalIPAddress"])
	}
	want := prevExt
	if want == 0 {
		want = port
	}
	for try := 0; try < 4; try++ {
		args := [][2]string{
			{"NewRemoteHost", ""},
			{"NewExternalPort", strconv.Itoa(int(want))},
			{"NewProtocol", "UDP"},
			{"NewInternalPort", strconv.Itoa(int(port))},
			{"NewInternalClient", c.cfg.Local.String()},
			{"NewEnabled", "1"},
			{"NewPortMappingDescription", c.cfg.Description},
			{"NewLeaseDuration", strconv.FormatUint(uint64(secs), 10)},
		}
		_, err = c.soap(ctx, st, "AddPortMapping", args)
		var re *ResultError
		switch {
		case err == nil:
			return netip.AddrPortFrom(ext, want), secs, nil
		case errors.As(err, &re) && re.Code == upnpOnlyPermanent && secs != 0:
			secs = 0
		case errors.As(err, &re) && re.Code == upnpConflict:
			var b [2]byte
			_, _ = rand.Read(b[:])
			want = 1024 + binary.BigEndian.Uint16(b[:])%(65535-1024)
		default:
			return netip.AddrPort{}, 0, err
		}
	}
	return netip.AddrPort{}, 0, err
}

func (c *Client) upnpDelete(ctx context.Context, st *upnpState, ext uint16) error {
	_, err := c.soap(ctx, st, "DeletePortMapping", [][2]string{
		{"NewRemoteHost", ""},
		{"NewExternalPort", strconv.Itoa(int(ext))},
		{"NewProtocol", "UDP"},
	})
	return err
}
