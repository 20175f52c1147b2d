package portmap_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/client/portmap"
	"github.com/traverse-rtc/traverse/client/portmap/portmaptest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

var loopback = netip.MustParseAddr("127.0.0.1")

func newClient(t *testing.T, gw *portmaptest.Gateway, protos ...portmap.Protocol) *portmap.Client {
	t.Helper()
	c, err := portmap.New(portmap.Config{
		Gateway: gw.Addr().Addr(), Local: loopback, PMPPort: gw.Addr().Port(),
		SSDPPort: 9, Protocols: protos, Timeout: 500 * time.Millisecond, Lifetime: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func newGateway(t *testing.T, cfg portmaptest.Config) *portmaptest.Gateway {
	t.Helper()
	g, err := portmaptest.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	return g
}

// pmpMapAnswer is a NAT-PMP mapping answer granting ext for internal.
func pmpMapAnswer(internal, ext uint16) []byte {
	b := []byte{0, 129, 0, 0, 0, 0, 0, 1}
	b = binary.BigEndian.AppendUint16(b, internal)
	b = binary.BigEndian.AppendUint16(b, ext)
	return binary.BigEndian.AppendUint32(b, 3600)
}

// TestForgedAnswersDropped: while the client waits for the gateway's
// answer, another host on the LAN (127.0.0.2) and another port of the
// gateway's own address answer first with a mapping of their choice. Both
// are dropped and counted; the gateway's answer wins.
func TestForgedAnswersDropped(t *testing.T) {
	forger := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.2:0"))
	sameIP := testkit.ListenUDP(t, netip.AddrPortFrom(loopback, 0))
	forged := 0
	g := newGateway(t, portmaptest.Config{OnRequest: func(g *portmaptest.Gateway, from netip.AddrPort, r portmaptest.Request) {
		if r.Opcode != 1 || forged > 0 {
			return
		}
		forged++
		for _, c := range []*net.UDPConn{forger, sameIP} {
			if _, err := c.WriteToUDPAddrPort(pmpMapAnswer(r.InternalPort, 6666), from); err != nil {
				t.Error(err)
			}
		}
	}})
	c := newClient(t, g, portmap.PMP)
	m, err := c.Map(context.Background(), 5000)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.External(); got.Port() == 6666 || got.Addr() != netip.MustParseAddr("192.0.2.1") {
		t.Fatalf("external %v: a forged answer was taken", got)
	}
	if s := c.Stats(); s.Foreign != 2 {
		t.Fatalf("foreign = %d, want 2 (%+v)", s.Foreign, s)
	}
}

// TestPCPWrongNonceDropped: a PCP answer from the gateway's address and
// port that does not echo the request's nonce (a blind forgery, or an
// answer meant for another request) is dropped and counted.
func TestPCPWrongNonceDropped(t *testing.T) {
	sent := false
	g := newGateway(t, portmaptest.Config{OnRequest: func(g *portmaptest.Gateway, from netip.AddrPort, r portmaptest.Request) {
		if r.Opcode != 1 || sent {
			return
		}
		sent = true
		var nonce [12]byte // not the client's
		b := portmap.AppendPCPMap(nil, nonce, loopback, r.InternalPort, netip.MustParseAddrPort("192.0.2.66:7777"), 3600)
		b[1] |= 0x80 // a request's layout is a SUCCESS answer's, with the R bit
		if err := g.Send(from, b); err != nil {
			t.Error(err)
		}
	}})
	c := newClient(t, g, portmap.PCP)
	m, err := c.Map(context.Background(), 5001)
	if err != nil {
		t.Fatal(err)
	}
	if m.External().Port() == 7777 {
		t.Fatal("took an answer with the wrong nonce")
	}
	if s := c.Stats(); s.Malformed != 1 {
		t.Fatalf("malformed = %d, want 1", s.Malformed)
	}
}

// TestRenewAndDelete: a mapping granted for 2 s renews at 1 s (the gateway
// moved it: Updates says where), and Close deletes it.
func TestRenewAndDelete(t *testing.T) {
	for _, proto := range []portmap.Protocol{portmap.PCP, portmap.PMP} {
		t.Run(proto.String(), func(t *testing.T) {
			g := newGateway(t, portmaptest.Config{MaxLifetime: 2})
			c := newClient(t, g, proto)
			m, err := c.Map(context.Background(), 5002)
			if err != nil {
				t.Fatal(err)
			}
			if m.Lifetime() != 2*time.Second || m.Protocol() != proto {
				t.Fatalf("lifetime %v, protocol %v", m.Lifetime(), m.Protocol())
			}
			first := m.External()
			g.MovePorts()
			select {
			case moved := <-m.Updates():
				if moved == first || moved != m.External() {
					t.Fatalf("update %v (first %v, now %v)", moved, first, m.External())
				}
			case <-time.After(3 * time.Second):
				t.Fatal("no renewal within 3 s of a 2 s mapping")
			}
			testkit.WaitFor(t, time.Second, "renewal counted", func() bool { return c.Stats().Renewals >= 1 })
			if s := c.Stats(); s.RenewFailures != 0 {
				t.Fatalf("stats %+v", s)
			}
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			if len(g.Mappings()) != 0 {
				t.Fatalf("mappings left after Close: %v", g.Mappings())
			}
			if !errors.Is(m.Err(), portmap.ErrClosed) {
				t.Fatalf("Err after Close = %v", m.Err())
			}
			if _, ok := <-m.Updates(); ok {
				t.Fatal("Updates still open after Close")
			}
		})
	}
}

// TestNothingAnswers: a gateway that speaks none of the protocols gives
// ErrUnavailable wrapping each protocol's ErrNoAnswer, in about one
// Timeout (the protocols are probed in parallel).
func TestNothingAnswers(t *testing.T) {
	silent := testkit.ListenUDP(t, netip.AddrPortFrom(loopback, 0))
	ap := netip.MustParseAddrPort(silent.LocalAddr().String())
	c, err := portmap.New(portmap.Config{Gateway: ap.Addr(), Local: loopback, PMPPort: ap.Port(), SSDPPort: ap.Port(),
		Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_, err = c.Map(context.Background(), 5003)
	if !errors.Is(err, portmap.ErrUnavailable) || !errors.Is(err, portmap.ErrNoAnswer) {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Fatalf("took %v: the probes did not run in parallel", d)
	}
	t.Log(err)
}

// TestRefusedThenFallback: a gateway refusing PCP MAP (NOT_AUTHORIZED) and
// NAT-PMP mappings makes Map fail with both ResultErrors; a NAT-PMP-only
// gateway answers the PCP probe with "unsupported version" and Map falls
// back to NAT-PMP.
func TestRefusedThenFallback(t *testing.T) {
	g := newGateway(t, portmaptest.Config{PCPResult: 2, PMPResult: 2})
	c := newClient(t, g, portmap.PCP, portmap.PMP)
	_, err := c.Map(context.Background(), 5004)
	var re *portmap.ResultError
	if !errors.Is(err, portmap.ErrUnavailable) || !errors.As(err, &re) || re.Code != 2 {
		t.Fatalf("err = %v", err)
	}

	g = newGateway(t, portmaptest.Config{NoPCP: true})
	c = newClient(t, g, portmap.PCP, portmap.PMP)
	o, err := c.Probe(context.Background())
	if err != nil || o.PCP || !o.PMP || o.PMPExternal != netip.MustParseAddr("192.0.2.1") {
		t.Fatalf("probe %+v, %v", o, err)
	}
	m, err := c.Map(context.Background(), 5005)
	if err != nil || m.Protocol() != portmap.PMP {
		t.Fatalf("Map: %v, %v", m, err)
	}
}

// TestNoLeak: closing the client stops every mapping's renewal goroutine.
func TestNoLeak(t *testing.T) {
	base := runtime.NumGoroutine()
	g, err := portmaptest.New(portmaptest.Config{MaxLifetime: 2})
	if err != nil {
		t.Fatal(err)
	}
	c, err := portmap.New(portmap.Config{Gateway: loopback, Local: loopback, PMPPort: g.Addr().Port(),
		Protocols: []portmap.Protocol{portmap.PCP, portmap.PMP}, Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for port := uint16(6000); port < 6004; port++ {
		if _, err := c.Map(context.Background(), port); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(g.Mappings()); n != 0 {
		t.Fatalf("%d mappings left on the gateway after Close", n)
	}
	_ = g.Close()
	testkit.WaitFor(t, 2*time.Second, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= base })
	if _, err := c.Map(context.Background(), 6005); !errors.Is(err, portmap.ErrClosed) {
		t.Fatalf("Map after Close: %v", err)
	}
}
