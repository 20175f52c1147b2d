package mediaproxy

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/addrpolicy"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// udpAt binds a UDP socket on ip (any loopback address).
func udpAt(t *testing.T, ip string) *net.UDPConn {
	t.Helper()
	return testkit.ListenUDP(t, netip.AddrPortFrom(netip.MustParseAddr(ip), 0))
}

// serverSends sends n RTP (or RTCP) packets from the server's socket to the
// stream's inside port, as a PBX playing an announcement does.
func serverSends(t *testing.T, server *net.UDPConn, to netip.AddrPort, n int, rtcp bool) {
	t.Helper()
	for i := 0; i < n; i++ {
		b := rtpPacket(0xabcd, uint16(i), "pbx")
		if rtcp {
			b = []byte{0x80, 200, 0, 1, 0, 0, 0xab, 0xcd}
		}
		if _, err := server.WriteToUDPAddrPort(b, to); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPolicyRefusesSignaledAddresses mounts the attack of issue 10 item 2:
// an outside party names, as its media address, a host of the operator's
// network (another loopback address with a listening victim, the cloud
// metadata address, CGNAT, the unspecified address) or one of the proxy's
// own sockets, and the server starts sending media before the party's own
// media arrives. The proxy runs in its most permissive mode
// (SendBeforeLatch), so only the policy stands between SDP and the
// victim: nothing may be sent, and each refusal is counted by reason.
func TestPolicyRefusesSignaledAddresses(t *testing.T) {
	victim := udpAt(t, "127.0.0.2")
	p := newTestProxy(t, func(c *Config) {
		c.Policy = addrpolicy.Filter{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.3/32")}}
		c.SendBeforeLatch = true
	})
	cs, err := ListenControl(p, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	server := udp(t)
	cases := []struct {
		name   string
		client netip.AddrPort
		own    bool
	}{
		{"loopback victim", addrOf(victim), false},
		{"metadata", netip.MustParseAddrPort("169.254.169.254:80"), false},
		{"CGNAT", netip.MustParseAddrPort("100.64.0.1:5004"), false},
		{"unspecified", netip.MustParseAddrPort("0.0.0.0:5004"), false},
		{"private", netip.MustParseAddrPort("10.0.0.1:5004"), false},
		{"IPv4-mapped metadata", netip.MustParseAddrPort("[::ffff:169.254.169.254]:80"), false},
		{"own RTP port", p.RTPAddr(), true},
		{"own RTCP port", p.RTCPAddr(), true},
		{"own control port", cs.Addr(), true},
	}
	c := p.Counters()
	for i, tc := range cases {
		id := "call" + string(rune('a'+i))
		pol, own := c.RefusedPolicy.Load(), c.RefusedOwn.Load()
		r, err := p.Apply(&Descriptor{Op: OpUpsert, Flags: FlagCallerOutside, CallID: id, Client: tc.client, Server: addrOf(server)})
		if err != nil {
			t.Fatal(err)
		}
		if tc.own && c.RefusedOwn.Load() != own+1 || !tc.own && c.RefusedPolicy.Load() != pol+1 {
			t.Errorf("%s: refusal not counted (policy %d, own %d)", tc.name, c.RefusedPolicy.Load()-pol, c.RefusedOwn.Load()-own)
		}
		drops := c.DropNoPeer.Load()
		serverSends(t, server, netip.AddrPortFrom(lo, r.InsideRTP), 5, false)
		testkit.WaitFor(t, 5*time.Second, "the server's 5 packets dropped with no peer", func() bool { return c.DropNoPeer.Load() == drops+5 })
		if c.RTPOut.Load() != 0 || c.DropWriteError.Load() != 0 {
			t.Fatalf("%s: server media sent outside: %d packets, %d write errors", tc.name, c.RTPOut.Load(), c.DropWriteError.Load())
		}
	}
	testkit.Silent(t, victim, "victim on 127.0.0.2")
	// The inside side cannot aim the proxy at itself either.
	if _, err := p.Apply(&Descriptor{Op: OpUpsert, Flags: FlagCallerOutside, CallID: "loop-inside", Server: p.RTPAddr()}); err != nil {
		t.Fatal(err)
	}
	if c.RefusedOwn.Load() != 4 {
		t.Fatalf("server address naming the fixed port: %d own refusals, want 4", c.RefusedOwn.Load())
	}
}

// TestNothingBeforeLatch: an outside party names an allowed address that
// is not its own (a reflection victim). The server's media is held until
// the party's own media arrives from the signaled IP; then it goes to where
// that media came from, never to the named port.
func TestNothingBeforeLatch(t *testing.T) {
	p := newTestProxy(t, func(c *Config) {
		c.Policy = addrpolicy.Filter{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.3/32")}}
	})
	victim, client, server := udpAt(t, "127.0.0.3"), udpAt(t, "127.0.0.3"), udp(t)
	testkit.Echo(t, server, nil)
	r, err := p.Apply(&Descriptor{Op: OpUpsert, Flags: FlagCallerOutside, CallID: "x", Client: addrOf(victim), Server: addrOf(server)})
	if err != nil {
		t.Fatal(err)
	}
	c := p.Counters()
	pbx := udp(t) // a second server socket: the server's IP is what is checked
	serverSends(t, pbx, netip.AddrPortFrom(lo, r.InsideRTP), 5, false)
	serverSends(t, pbx, netip.AddrPortFrom(lo, r.InsideRTCP), 5, true)
	testkit.WaitFor(t, 5*time.Second, "10 packets dropped before the latch", func() bool { return c.DropNotLatched.Load() == 10 })
	testkit.Silent(t, victim, "named address before the latch")
	// The party's own media latches the stream; the echo comes back to it.
	if _, err := client.WriteToUDPAddrPort(rtpPacket(77, 1, "me"), p.RTPAddr()); err != nil {
		t.Fatal(err)
	}
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	if n, from, err := client.ReadFromUDPAddrPort(buf); err != nil || string(buf[12:n]) != "me" || from != p.RTPAddr() {
		t.Fatalf("latched client: %q from %v: %v", buf[:n], from, err)
	}
	testkit.Silent(t, victim, "named address after the latch")
}

// TestOwnSocketLoop mounts the loop of issue 10: the client's media address
// is the proxy's own fixed RTP port and the server echoes. Before, 5
// packets became ~230,000 forwards each way in 3 s. Even with loopback
// allowed and sending before the latch, the forwards stay bounded.
func TestOwnSocketLoop(t *testing.T) {
	p := newTestProxy(t, func(c *Config) { c.SendBeforeLatch = true })
	server := udp(t)
	testkit.Echo(t, server, nil)
	r, err := p.Apply(&Descriptor{Op: OpUpsert, Flags: FlagCallerOutside, CallID: "loop", Client: p.RTPAddr(), Server: addrOf(server)})
	if err != nil {
		t.Fatal(err)
	}
	c := p.Counters()
	serverSends(t, server, netip.AddrPortFrom(lo, r.InsideRTP), 5, false)
	testkit.WaitFor(t, 5*time.Second, "the server's 5 packets accounted for", func() bool { return c.DropNoPeer.Load()+c.RTPOut.Load() >= 5 })
	// Watch for a while: a loop would run away within milliseconds.
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if n := c.RTPIn.Load() + c.RTPOut.Load(); n >= 50 {
			t.Fatalf("loop: %d forwards for 5 packets", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("5 packets: %d forwards in, %d out, %d own refusals", c.RTPIn.Load(), c.RTPOut.Load(), c.RefusedOwn.Load())
}

// TestLatchRefusesOwnSource: a packet whose source is one of the proxy's
// own sockets never becomes a stream's destination.
func TestLatchRefusesOwnSource(t *testing.T) {
	p := newTestProxy(t, nil)
	if _, err := p.Apply(&Descriptor{Op: OpUpsert, Flags: FlagCallerOutside, CallID: "s", Client: netip.AddrPortFrom(lo, 9)}); err != nil {
		t.Fatal(err)
	}
	if s := p.latch(5, p.RTCPAddr(), &p.rtpLeg); s != nil {
		t.Fatal("latched to the proxy's own RTCP port")
	}
	if p.Counters().DropRefusedSource.Load() != 1 {
		t.Fatal("not counted")
	}
	if s := p.latch(5, netip.AddrPortFrom(lo, 9), &p.rtpLeg); s == nil {
		t.Fatal("the signaled source does not latch")
	}
}
