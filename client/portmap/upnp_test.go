package portmap_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/client/portmap"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

const rootDesc = `<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><device>
<deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType><friendlyName>lab router</friendlyName>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType><controlURL>/ctl/L3F</controlURL></service></serviceList>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/ctl/IPConn</controlURL></service></serviceList>
</device></deviceList></device></deviceList></device></root>`

// fakeIGD is a UPnP IGD on 127.0.0.1: an SSDP responder and an HTTP server
// answering the WANIPConnection:1 actions; the first AddPortMapping is a
// conflict (718).
type fakeIGD struct {
	ssdp *net.UDPConn
	http net.Listener
	desc string

	mu         sync.Mutex // guards the fields below
	adds       int
	mappings   map[string]string // external port -> internal client:port
	beforeSSDP func(from netip.AddrPort)
}

func newFakeIGD(t *testing.T, desc string, beforeSSDP func(from netip.AddrPort)) *fakeIGD {
	t.Helper()
	f := &fakeIGD{ssdp: testkit.ListenUDP(t, netip.AddrPortFrom(loopback, 0)), desc: desc,
		mappings: map[string]string{}, beforeSSDP: beforeSSDP}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.http = ln
	srv := &http.Server{Handler: f, ReadHeaderTimeout: time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	ssdpDone := make(chan struct{})
	go func() {
		defer close(ssdpDone)
		buf := make([]byte, 1500)
		for {
			n, from, err := f.ssdp.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if !strings.HasPrefix(string(buf[:n]), "M-SEARCH * HTTP/1.1\r\n") {
				continue
			}
			if f.beforeSSDP != nil {
				f.beforeSSDP(from)
			}
			_, _ = f.ssdp.WriteToUDPAddrPort([]byte(ssdpAnswer("http://"+ln.Addr().String()+"/rootDesc.xml")), from)
		}
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
		_ = f.ssdp.Close()
		<-ssdpDone
	})
	return f
}

func ssdpAnswer(location string) string {
	return "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n" +
		"USN: uuid:1::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nEXT:\r\nSERVER: test UPnP/1.1\r\nLOCATION: " + location + "\r\n\r\n"
}

func (f *fakeIGD) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && r.URL.Path == "/rootDesc.xml" {
		_, _ = io.WriteString(w, f.desc)
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
	action := strings.TrimSuffix(strings.SplitN(r.Header.Get("SOAPAction"), "#", 2)[1], `"`)
	arg := func(name string) string {
		_, v, _ := strings.Cut(string(body), "<"+name+">")
		v, _, _ = strings.Cut(v, "</"+name+">")
		return v
	}
	reply := func(inner string) {
		fmt.Fprintf(w, `<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><u:%sResponse xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1">%s</u:%sResponse></s:Body></s:Envelope>`, action, inner, action)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch action {
	case "GetExternalIPAddress":
		reply("<NewExternalIPAddress>192.0.2.9</NewExternalIPAddress>")
	case "AddPortMapping":
		f.adds++
		if f.adds == 1 {
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, `<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>718</errorCode><errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>`)
			return
		}
		f.mappings[arg("NewExternalPort")] = arg("NewInternalClient") + ":" + arg("NewInternalPort")
		reply("")
	case "DeletePortMapping":
		delete(f.mappings, arg("NewExternalPort"))
		reply("")
	default:
		w.WriteHeader(http.StatusInternalServerError)
	}
}

func upnpClient(t *testing.T, f *fakeIGD) *portmap.Client {
	t.Helper()
	silent := testkit.ListenUDP(t, netip.AddrPortFrom(loopback, 0))
	c, err := portmap.New(portmap.Config{
		Gateway: loopback, Local: loopback, Protocols: []portmap.Protocol{portmap.UPnP},
		PMPPort:  netip.MustParseAddrPort(silent.LocalAddr().String()).Port(),
		SSDPPort: netip.MustParseAddrPort(f.ssdp.LocalAddr().String()).Port(),
		Timeout:  time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestUPnP maps through a fake IGD whose first AddPortMapping conflicts,
// while a LAN host forges an SSDP answer (dropped: not the gateway) and the
// gateway's address sends one pointing off the gateway (dropped:
// malformed); Close deletes the mapping.
func TestUPnP(t *testing.T) {
	forger := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.2:0"))
	stray := testkit.ListenUDP(t, netip.AddrPortFrom(loopback, 0))
	f := newFakeIGD(t, rootDesc, func(from netip.AddrPort) {
		_, _ = forger.WriteToUDPAddrPort([]byte(ssdpAnswer("http://127.0.0.2:80/evil.xml")), from)
		_, _ = stray.WriteToUDPAddrPort([]byte(ssdpAnswer("http://127.0.0.3:80/evil.xml")), from)
	})
	c := upnpClient(t, f)
	m, err := c.Map(context.Background(), 5006)
	if err != nil {
		t.Fatal(err)
	}
	ext := m.External()
	if ext.Addr() != netip.MustParseAddr("192.0.2.9") || ext.Port() == 5006 || m.Protocol() != portmap.UPnP {
		t.Fatalf("external %v (%v): want 192.0.2.9 and a port other than the conflicting 5006", ext, m.Protocol())
	}
	f.mu.Lock()
	got := f.mappings[fmt.Sprint(ext.Port())]
	f.mu.Unlock()
	if got != "127.0.0.1:5006" {
		t.Fatalf("router maps %d to %q", ext.Port(), got)
	}
	if s := c.Stats(); s.Foreign < 1 || s.Malformed < 1 {
		t.Fatalf("stats %+v: the forged and the off-gateway answers were not counted", s)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	left := len(f.mappings)
	f.mu.Unlock()
	if left != 0 {
		t.Fatal("mapping not deleted")
	}
}

// TestUPnPOversize: a device description over MaxHTTPBytes is refused and
// counted.
func TestUPnPOversize(t *testing.T) {
	f := newFakeIGD(t, rootDesc+strings.Repeat(" ", portmap.DefaultMaxHTTPBytes), nil)
	c := upnpClient(t, f)
	_, err := c.Map(context.Background(), 5007)
	if !errors.Is(err, portmap.ErrUnavailable) || !errors.Is(err, portmap.ErrMalformed) {
		t.Fatalf("err = %v", err)
	}
	if s := c.Stats(); s.Oversize != 1 {
		t.Fatalf("oversize = %d", s.Oversize)
	}
}
