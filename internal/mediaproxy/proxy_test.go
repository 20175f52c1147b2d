package mediaproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/traverse-rtc/traverse/internal/addrpolicy"
	"github.com/traverse-rtc/traverse/internal/testkit"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

var lo = netip.MustParseAddr("127.0.0.1")

func newTestProxy(t *testing.T, mod func(*Config)) *Proxy {
	t.Helper()
	cfg := Config{
		RTP: netip.AddrPortFrom(lo, 0), RTCP: netip.AddrPortFrom(lo, 0),
		InsideIP: lo, InsidePorts: freeRange(t, 40),
		Policy: addrpolicy.Filter{Loopback: true}, // every test party is on loopback
	}
	if mod != nil {
		mod(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// freeRange returns a port range of n ports above an ephemeral port; the
// pool skips any port that turns out to be taken.
func freeRange(t *testing.T, n int) PortRange {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := uint16(c.LocalAddr().(*net.UDPAddr).Port)
	if p > 65000 {
		p = 20000
	}
	return PortRange{p + 2, p + 2 + uint16(n)}
}

// udp opens a loopback socket for the duration of the test.
func udp(t *testing.T) *net.UDPConn {
	t.Helper()
	return testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
}

func addrOf(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

func rtpPacket(ssrc uint32, seq uint16, tag string) []byte {
	b := []byte{0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(b[2:], seq)
	binary.BigEndian.PutUint32(b[8:], ssrc)
	return append(b, tag...)
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestForwardingCollisionsAndLatch runs three clients through the fixed
// port: one declares its SSRC, two declare none and send the SAME SSRC (as
// SIPp does). Each must get back only its own tagged packets, and a packet
// from an unsignaled address is dropped. One scenario told in order, hence
// its length.
func TestForwardingCollisionsAndLatch(t *testing.T) {
	p := newTestProxy(t, nil)
	server := udp(t)
	testkit.Echo(t, server, nil)
	type client struct {
		c    *net.UDPConn
		ssrc uint32
		d    Descriptor
	}
	var cls []*client
	for i, ssrc := range []uint32{0x1111, 0x2222, 0x2222} {
		c := udp(t)
		d := Descriptor{Op: OpUpsert, Flags: FlagCallerOutside, CallID: string(rune('a' + i)), Client: addrOf(c)}
		if i == 0 {
			d.Flags |= FlagSSRC
			d.SSRC = ssrc
		}
		r, err := p.Apply(&d)
		if err != nil {
			t.Fatal(err)
		}
		if r.FixedRTP != p.RTPAddr().Port() || r.InsideRTCP != r.InsideRTP+1 {
			t.Fatalf("reply %+v", r)
		}
		// The answer: the server's address.
		d.Server = addrOf(server)
		if _, err := p.Apply(&d); err != nil {
			t.Fatal(err)
		}
		cls = append(cls, &client{c: c, ssrc: ssrc, d: d})
	}
	const n = 20
	for seq := 0; seq < n; seq++ {
		for i, cl := range cls {
			if _, err := cl.c.WriteToUDPAddrPort(rtpPacket(cl.ssrc, uint16(seq), string(rune('a'+i))), p.RTPAddr()); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i, cl := range cls {
		_ = cl.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2048)
		for k := 0; k < n; k++ {
			m, from, err := cl.c.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("client %d got %d of %d: %v", i, k, n, err)
			}
			if from != p.RTPAddr() || string(buf[12:m]) != string(rune('a'+i)) {
				t.Fatalf("client %d got %q from %v", i, buf[12:m], from)
			}
		}
	}
	// A latched sender that changes its SSRC (SIPp's DTMF capture) stays
	// its stream's.
	if _, err := cls[1].c.WriteToUDPAddrPort(rtpPacket(0x3333, 99, "b"), p.RTPAddr()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	if m, _, err := cls[1].c.ReadFromUDPAddrPort(buf); err != nil || string(buf[12:m]) != "b" {
		t.Fatalf("after SSRC change: %q %v", buf[12:m], err)
	}
	if p.Counters().SSRCChanges.Load() != 1 {
		t.Fatal("SSRC change not counted")
	}
	if got := p.Counters().Latched.Load(); got != 2 {
		t.Errorf("latched %d SSRCs, want 2", got)
	}
	// A stranger with a known SSRC is dropped.
	stranger, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if stranger != nil {
		defer stranger.Close()
		_, _ = stranger.WriteToUDPAddrPort(rtpPacket(0x2222, 1, "x"), p.RTPAddr())
		testkit.WaitFor(t, 5*time.Second, "the stranger's packet dropped", func() bool { return p.Counters().DropUnknownSSRC.Load() == 1 })
	}
	var r Reply
	testkit.WaitFor(t, 5*time.Second, "call b's packets counted", func() bool {
		var err error
		r, err = p.Apply(&Descriptor{Op: OpQuery, CallID: "b"})
		return err == nil && r.ToClient == n+1
	})
	if !r.SSRCKnown || r.SSRC != 0x2222 || r.ToServer != n+1 {
		t.Fatalf("query: %+v", r)
	}
	for _, cl := range cls {
		if err := p.DeleteCall(cl.d.CallID); err != nil {
			t.Fatal(err)
		}
	}
	if p.PortsInUse() != 0 || p.Streams() != 0 {
		t.Fatalf("leak: %d ports, %d streams", p.PortsInUse(), p.Streams())
	}
}

func TestRTCPForwarding(t *testing.T) {
	p := newTestProxy(t, nil)
	server, serverRTCP := udp(t), udp(t)
	testkit.Echo(t, server, nil)
	testkit.Echo(t, serverRTCP, nil)
	c, cr := udp(t), udp(t)
	d := Descriptor{Op: OpUpsert, Flags: FlagCalleeOutside | FlagSSRC, SSRC: 9, CallID: "r",
		Client: addrOf(c), ClientRTCP: addrOf(cr), Server: addrOf(server), ServerRTCP: addrOf(serverRTCP)}
	if _, err := p.Apply(&d); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	_, _ = c.WriteToUDPAddrPort(rtpPacket(9, 1, "rtp"), p.RTPAddr())
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
		t.Fatal(err)
	}
	rr := []byte{0x80, 201, 0, 1, 0, 0, 0, 9}
	_, _ = cr.WriteToUDPAddrPort(rr, p.RTCPAddr())
	_ = cr.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := cr.ReadFromUDPAddrPort(buf)
	if err != nil || n != len(rr) || from != p.RTCPAddr() {
		t.Fatalf("rtcp echo: %d from %v: %v", n, from, err)
	}
	testkit.WaitFor(t, 5*time.Second, "one RTCP packet in and out", func() bool { return p.Counters().RTCPIn.Load() == 1 && p.Counters().RTCPOut.Load() == 1 })
}

func TestMediaTimeout(t *testing.T) {
	ended := make(chan string, 1)
	p := newTestProxy(t, func(c *Config) {
		c.MediaTimeout, c.SetupTimeout, c.Tick = 200*time.Millisecond, 300*time.Millisecond, 20*time.Millisecond
		c.OnTimeout = func(id string) { ended <- id }
	})
	if _, err := p.Apply(&Descriptor{Op: OpUpsert, Flags: FlagCallerOutside, CallID: "t",
		Client: netip.MustParseAddrPort("127.0.0.1:9")}); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-ended:
		if id != "t" {
			t.Fatal(id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no timeout")
	}
	if p.PortsInUse() != 0 || p.Streams() != 0 {
		t.Fatal("leak after timeout")
	}
}

func TestPoolExhaustion(t *testing.T) {
	p := newTestProxy(t, func(c *Config) { c.InsidePorts = PortRange{c.InsidePorts.Low, c.InsidePorts.Low + 3} })
	var err error
	for i := 0; i < 4 && err == nil; i++ {
		_, err = p.Apply(&Descriptor{Op: OpUpsert, Flags: FlagCallerOutside, CallID: string(rune('a' + i))})
	}
	if !errors.Is(err, ErrNoPorts) {
		t.Fatalf("got %v, want ErrNoPorts", err)
	}
}

func TestControlProtocol(t *testing.T) {
	p := newTestProxy(t, nil)
	cs, err := ListenControl(p, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	cc, err := DialControl(cs.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx := context.Background()
	r, err := cc.Do(ctx, &Descriptor{Op: OpUpsert, Flags: FlagCallerOutside | FlagSSRC, SSRC: 5, CallID: "k",
		Client: netip.MustParseAddrPort("127.0.0.1:7")})
	if err != nil || r.InsideRTP == 0 || r.FixedRTP != p.RTPAddr().Port() || !r.SSRCKnown || r.SSRC != 5 {
		t.Fatalf("upsert: %+v %v", r, err)
	}
	if _, err := cc.Do(ctx, &Descriptor{Op: OpQuery, CallID: "nope"}); !errors.Is(err, ErrNoSession) {
		t.Fatalf("query unknown: %v", err)
	}
	if _, err := cc.Do(ctx, &Descriptor{Op: OpDelete, Index: AllStreams, CallID: "k"}); err != nil {
		t.Fatal(err)
	}
	if p.Streams() != 0 {
		t.Fatal("not deleted")
	}
}

// TestOutsidePathAllocs checks that demultiplexing and forwarding a packet
// from the fixed port allocates nothing.
func TestOutsidePathAllocs(t *testing.T) {
	p := newTestProxy(t, nil)
	server := udp(t)
	c := udp(t)
	if _, err := p.Apply(&Descriptor{Op: OpUpsert, Flags: FlagCallerOutside | FlagSSRC, SSRC: 3, CallID: "z",
		Client: addrOf(c), Server: addrOf(server)}); err != nil {
		t.Fatal(err)
	}
	m := udpio.NewMessages(1, 0)[0]
	m.N = copy(m.Buf, rtpPacket(3, 1, "payload"))
	m.Addr = addrOf(c)
	p.fromOutside(&m, &p.rtpLeg, 1)
	allocs := testing.AllocsPerRun(200, func() { p.fromOutside(&m, &p.rtpLeg, 1) })
	if allocs != 0 {
		t.Fatalf("%v allocations per packet", allocs)
	}
}

// TestRawSendAllocs checks the batched raw path: demultiplex, queue, send.
func TestRawSendAllocs(t *testing.T) {
	p := newTestProxy(t, nil)
	if p.raw == nil {
		t.Skip("no raw socket (needs CAP_NET_RAW)")
	}
	server := udp(t)
	c := udp(t)
	if _, err := p.Apply(&Descriptor{Op: OpUpsert, Flags: FlagCallerOutside | FlagSSRC, SSRC: 3, CallID: "z",
		Client: addrOf(c), Server: addrOf(server)}); err != nil {
		t.Fatal(err)
	}
	r, err := newRawSender(4)
	if err != nil {
		t.Skip(err)
	}
	defer r.close()
	m := udpio.NewMessages(1, 0)[0]
	m.N = copy(m.Buf, rtpPacket(3, 1, "payload"))
	m.Addr = addrOf(c)
	sent := 0
	done := func(*stream, int) { sent++ }
	once := func() {
		s, dst, ok := p.demuxOutside(&m, &p.rtpLeg)
		if !ok || !r.add(s, m.Payload(), netip.AddrPortFrom(lo, s.insidePort), dst) {
			t.Fatal("not queued")
		}
		r.flush(done)
	}
	once()
	buf := make([]byte, 2048)
	_ = server.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := server.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[12:n]) != "payload" || from.Port() < p.cfg.InsidePorts.Low {
		t.Fatalf("raw send: %q from %v: %v", buf[:n], from, err)
	}
	if allocs := testing.AllocsPerRun(200, once); allocs != 0 {
		t.Fatalf("%v allocations per packet", allocs)
	}
	if sent != 202 {
		t.Fatalf("%d sent", sent)
	}
}

func BenchmarkFromOutside(b *testing.B) {
	p, err := New(Config{RTP: netip.AddrPortFrom(lo, 0), RTCP: netip.AddrPortFrom(lo, 0), InsideIP: lo, InsidePorts: PortRange{41000, 42000},
		Policy: addrpolicy.Filter{Loopback: true}})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	sink, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer sink.Close()
	src := netip.MustParseAddrPort("127.0.0.1:5000")
	for i := 0; i < 100; i++ {
		_, _ = p.Apply(&Descriptor{Op: OpUpsert, Flags: FlagCallerOutside | FlagSSRC, SSRC: uint32(i), CallID: string(rune(300 + i)),
			Client: src, Server: addrOf(sink)})
	}
	m := udpio.NewMessages(1, 0)[0]
	m.N = copy(m.Buf, rtpPacket(42, 1, "0123456789012345678901234567890123456789012345678901234567890123456789"))
	m.Addr = src
	b.ReportAllocs()
	for b.Loop() {
		p.fromOutside(&m, &p.rtpLeg, 1)
	}
}

// TestRunClose: Run returns once its context ends, having closed the
// proxy; Close after that is a no-op, and a closed proxy takes no stream.
func TestRunClose(t *testing.T) {
	p := newTestProxy(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- p.Run(ctx) }()
	testkit.Stop(t, "Run", cancel, ran)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Apply(&Descriptor{Op: OpUpsert, Flags: FlagCallerOutside, CallID: "late"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Apply after Run: %v, want ErrClosed", err)
	}
}
