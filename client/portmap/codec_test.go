package portmap_test

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/traverse-rtc/traverse/client/portmap"
)

// pcpMapAnswer turns a MAP request into the SUCCESS answer a server would
// send (the layouts match but for the R bit and the header's middle).
func pcpMapAnswer(req []byte) []byte {
	b := bytes.Clone(req)
	b[1] |= 0x80
	copy(b[8:24], make([]byte, 16))
	return b
}

func TestPCPRoundTrip(t *testing.T) {
	nonce := [12]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	ext := netip.MustParseAddrPort("192.0.2.7:4242")
	req := portmap.AppendPCPMap(nil, nonce, netip.MustParseAddr("10.0.0.2"), 5000, ext, 7200)
	if len(req) != 60 || req[0] != 2 || req[1] != 1 {
		t.Fatalf("request % x", req)
	}
	r, err := portmap.ParsePCPResponse(pcpMapAnswer(req))
	if err != nil {
		t.Fatal(err)
	}
	if r.Opcode != 1 || r.Result != 0 || r.Lifetime != 7200 || r.Nonce != nonce || r.Protocol != 17 ||
		r.InternalPort != 5000 || r.External != ext {
		t.Fatalf("%+v", r)
	}
	for _, bad := range [][]byte{nil, req[:23], append([]byte{1}, req[1:]...), req /* no R bit */, pcpMapAnswer(req)[:40]} {
		if _, err := portmap.ParsePCPResponse(bad); !errors.Is(err, portmap.ErrMalformed) {
			t.Errorf("% x: err %v", bad, err)
		}
	}
}

func TestPMPParse(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want portmap.PMPResponse
		ok   bool
	}{
		{[]byte{0, 128, 0, 0, 0, 0, 0, 9, 192, 0, 2, 1}, portmap.PMPResponse{Opcode: 0, Epoch: 9, ExternalAddr: netip.MustParseAddr("192.0.2.1")}, true},
		{[]byte{0, 129, 0, 0, 0, 0, 0, 9, 0x13, 0x88, 0x10, 0x92, 0, 0, 0x1c, 0x20}, portmap.PMPResponse{Opcode: 1, Epoch: 9, InternalPort: 5000, ExternalPort: 4242, Lifetime: 7200}, true},
		{[]byte{0, 129, 0, 2, 0, 0, 0, 9}, portmap.PMPResponse{Opcode: 1, Result: 2, Epoch: 9}, true},
		{[]byte{0, 129, 0, 0, 0, 0, 0, 9}, portmap.PMPResponse{}, false},
		{[]byte{0, 1, 0, 0, 0, 0, 0, 9, 1, 2, 3, 4}, portmap.PMPResponse{}, false},
		{[]byte{2, 128, 0, 0, 0, 0, 0, 9, 1, 2, 3, 4}, portmap.PMPResponse{}, false},
		{[]byte{0, 130, 0, 0, 0, 0, 0, 9, 1, 2, 3, 4}, portmap.PMPResponse{}, false},
	} {
		got, err := portmap.ParsePMPResponse(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("% x: %+v, %v", tc.in, got, err)
		}
	}
}

func TestSSDPParse(t *testing.T) {
	r, err := portmap.ParseSSDPResponse([]byte(ssdpAnswer("http://10.1.0.1:5000/rootDesc.xml")))
	if err != nil || r.Location != "http://10.1.0.1:5000/rootDesc.xml" || r.ST == "" {
		t.Fatalf("%+v, %v", r, err)
	}
	for _, bad := range []string{"", "NOTIFY * HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK\r\nLOCATION: ftp://x/\r\n\r\n",
		"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n", "HTTP/1.1 404 Not Found\r\nLOCATION: http://1.2.3.4/\r\n\r\n"} {
		if _, err := portmap.ParseSSDPResponse([]byte(bad)); !errors.Is(err, portmap.ErrMalformed) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestDeviceDescription(t *testing.T) {
	s, err := portmap.ParseDeviceDescription([]byte(rootDesc))
	if err != nil || s.Type != "urn:schemas-upnp-org:service:WANIPConnection:1" || s.ControlURL != "/ctl/IPConn" || s.FriendlyName != "lab router" {
		t.Fatalf("%+v, %v", s, err)
	}
	if _, err := portmap.ParseDeviceDescription([]byte(`<root><device></device></root>`)); !errors.Is(err, portmap.ErrMalformed) {
		t.Fatal(err)
	}
}

func TestSOAPParse(t *testing.T) {
	out, err := portmap.ParseSOAPResponse([]byte(`<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><u:GetExternalIPAddressResponse xmlns:u="x"><NewExternalIPAddress>192.0.2.9</NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body></s:Envelope>`), "GetExternalIPAddress")
	if err != nil || out["NewExternalIPAddress"] != "192.0.2.9" {
		t.Fatalf("%v, %v", out, err)
	}
	_, err = portmap.ParseSOAPResponse([]byte(`<s:Envelope><s:Body><s:Fault><detail><UPnPError><errorCode>725</errorCode><errorDescription>OnlyPermanentLeasesSupported</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>`), "AddPortMapping")
	var re *portmap.ResultError
	if !errors.As(err, &re) || re.Code != 725 || re.Protocol != portmap.UPnP {
		t.Fatalf("fault: %v", err)
	}
	if _, err := portmap.ParseSOAPResponse([]byte(`<a><b>`), "X"); !errors.Is(err, portmap.ErrMalformed) {
		t.Fatal(err)
	}
}

const routeTable = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n" +
	"eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n" +
	"eth1\t00000000\t0100000A\t0003\t0\t0\t50\t00000000\t0\t0\t0\n" +
	"eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"

func TestRouteTable(t *testing.T) {
	gw, err := portmap.ParseRouteTable([]byte(routeTable))
	if err != nil || gw != netip.MustParseAddr("10.0.0.1") {
		t.Fatalf("%v, %v (want the lower metric's 10.0.0.1)", gw, err)
	}
	if _, err := portmap.ParseRouteTable([]byte("Iface\n")); !errors.Is(err, portmap.ErrNoGateway) {
		t.Fatal(err)
	}
}

// The fuzz targets: every parser of what the gateway (or anyone on the
// LAN) sends must return a value or an error, never panic.

func FuzzParsePCPResponse(f *testing.F) {
	var nonce [12]byte
	f.Add(pcpMapAnswer(portmap.AppendPCPMap(nil, nonce, netip.MustParseAddr("10.0.0.2"), 1, netip.AddrPort{}, 60)))
	f.Add(pcpMapAnswer(portmap.AppendPCPAnnounce(nil, netip.MustParseAddr("10.0.0.2"))))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := portmap.ParsePCPResponse(b)
		if err == nil && (len(b) < 24 || b[0] != 2 || r.Opcode != b[1]&0x7f) {
			t.Fatalf("accepted % x", b)
		}
	})
}

func FuzzParsePMPResponse(f *testing.F) {
	f.Add([]byte{0, 128, 0, 0, 0, 0, 0, 9, 192, 0, 2, 1})
	f.Add([]byte{0, 129, 0, 0, 0, 0, 0, 9, 0x13, 0x88, 0x10, 0x92, 0, 0, 0x1c, 0x20})
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := portmap.ParsePMPResponse(b); err == nil && len(b) < 8 {
			t.Fatalf("accepted % x", b)
		}
	})
}

func FuzzParseSSDPResponse(f *testing.F) {
	f.Add([]byte(ssdpAnswer("http://10.1.0.1:5000/rootDesc.xml")))
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := portmap.ParseSSDPResponse(b); err == nil && r.Location == "" {
			t.Fatalf("accepted without a location: %q", b)
		}
	})
}

func FuzzParseDeviceDescription(f *testing.F) {
	f.Add([]byte(rootDesc))
	f.Fuzz(func(t *testing.T, b []byte) {
		if s, err := portmap.ParseDeviceDescription(b); err == nil && s.ControlURL == "" {
			t.Fatalf("accepted without a control URL: %q", b)
		}
	})
}

func FuzzParseSOAPResponse(f *testing.F) {
	f.Add([]byte(`<s:Envelope><s:Body><u:AddPortMappingResponse></u:AddPortMappingResponse></s:Body></s:Envelope>`))
	f.Add([]byte(`<s:Envelope><s:Body><s:Fault><detail><UPnPError><errorCode>718</errorCode></UPnPError></detail></s:Fault></s:Body></s:Envelope>`))
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := portmap.ParseSOAPResponse(b, "AddPortMapping")
		if err == nil && out == nil {
			t.Fatal("nil map without an error")
		}
	})
}

func FuzzParseRouteTable(f *testing.F) {
	f.Add([]byte(routeTable))
	f.Fuzz(func(t *testing.T, b []byte) {
		if gw, err := portmap.ParseRouteTable(b); err == nil && !gw.Is4() {
			t.Fatalf("gateway %v", gw)
		}
	})
}
