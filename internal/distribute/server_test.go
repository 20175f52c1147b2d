package distribute

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/traverse-rtc/traverse/internal/metricstest"
	"github.com/traverse-rtc/traverse/internal/testkit"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// unreachable feeds a receiver whose port is closed: the ICMP port
// unreachable its copies cause (whichever path sent them: the errors come
// back to the stream's socket) marks it, and it is removed after
// UnreachableTimeout and counted, while the live receiver keeps its
// packets.
func unreachable(t *testing.T, e BehaviourEnv) {
	_, conns, addrs, sender := addStream(t, e, 2)
	conns[1].Close() // nothing listens there any more
	send(t, sender, e.Dst, 5, 0, 5)
	expect(t, conns[0], 0, 5, 5, "live receiver")
	testkit.WaitFor(t, 5*time.Second, "the dead receiver removed", func() bool {
		_, n := e.Table.Counts()
		return n == 1
	})
	if v := metricstest.Value(t, e.Reg, "traverse_distribute_receivers_removed_total", "reason", "unreachable"); v != 1 {
		t.Errorf("removed{unreachable} = %v, want 1", v)
	}
	if v := metricstest.Value(t, e.Reg, "traverse_distribute_icmp_unreachable_total"); v < 1 {
		t.Errorf("icmp_unreachable = %v, want >= 1", v)
	}
	if got := e.Table.Streams()[0].Receivers[0].Addr; got != addrs[0] {
		t.Errorf("kept %v, want %v", got, addrs[0])
	}
	send(t, sender, e.Dst, 5, 5, 8)
	expect(t, conns[0], 5, 8, 5, "live receiver after the removal")
}

// TestRTCPSilence removes a receiver that sends no RTCP and keeps one
// that does.
func TestRTCPSilence(t *testing.T) {
	const timeout = 400 * time.Millisecond
	e := userspaceEnv(t, func(c *Config) {
		c.RTCPTimeout = timeout
		c.ReapInterval = 50 * time.Millisecond
	})
	conns, addrs := receivers(t, 2)
	k := StreamKey{Dst: e.Dst}
	start := time.Now()
	if err := e.Table.AddStream(Stream{Key: k, Receivers: addrs}); err != nil {
		t.Fatal(err)
	}
	// Receiver 0 reports every 100 ms, from the socket it receives on.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			_, _ = conns[0].WriteToUDPAddrPort(rtcpRR(77), e.Dst)
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	}()
	defer func() { close(stop); <-done }()
	testkit.WaitFor(t, 5*time.Second, "the silent receiver removed", func() bool {
		_, n := e.Table.Counts()
		return n == 1
	})
	if el := time.Since(start); el < timeout {
		t.Errorf("removed after %v, before the %v timeout", el, timeout)
	}
	if got := e.Table.Streams()[0].Receivers; len(got) != 1 || got[0].Addr != addrs[0] || got[0].LastHeard.IsZero() {
		t.Fatalf("kept %+v, want the reporting receiver %v", got, addrs[0])
	}
	if v := metricstest.Value(t, e.Reg, "traverse_distribute_receivers_removed_total", "reason", "rtcp_silence"); v != 1 {
		t.Errorf("removed{rtcp_silence} = %v, want 1", v)
	}
	if v := metricstest.Value(t, e.Reg, "traverse_distribute_receiver_rtcp_total"); v < 1 {
		t.Errorf("receiver_rtcp = %v", v)
	}
}

// TestPolicyAndLimits: the shared deny list refuses receivers (private,
// loopback unless allowed, our own port always), and the limits hold.
func TestPolicyAndLimits(t *testing.T) {
	s, err := New(Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, MaxStreams: 2, MaxReceivers: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tb, dst := s.Table(), s.Addrs()[0]
	pub := netip.MustParseAddrPort("192.0.2.1:5000") // documentation range: allowed by default
	for _, a := range []string{"127.0.0.1:5000", "10.1.2.3:5000", "169.254.169.254:80", "[::1]:5000", "[::ffff:10.0.0.1]:9", "[64:ff9b::a00:1]:9"} {
		if err := tb.AddStream(Stream{Key: StreamKey{Dst: dst}, Receivers: []netip.AddrPort{netip.MustParseAddrPort(a)}}); !errors.Is(err, ErrRefused) {
			t.Errorf("receiver %s: %v, want ErrRefused", a, err)
		}
	}
	for _, a := range []string{"0.0.0.0:5", "224.0.0.1:5", "192.0.2.1:0"} {
		if err := tb.AddStream(Stream{Key: StreamKey{Dst: dst}, Receivers: []netip.AddrPort{netip.MustParseAddrPort(a)}}); !errors.Is(err, ErrBadReceiver) {
			t.Errorf("receiver %s: %v, want ErrBadReceiver", a, err)
		}
	}
	if err := tb.AddStream(Stream{Key: StreamKey{Dst: netip.MustParseAddrPort("127.0.0.1:1")}}); !errors.Is(err, ErrBadStream) {
		t.Errorf("stream on a port not ours: %v", err)
	}
	k := StreamKey{Dst: dst}
	if err := tb.AddStream(Stream{Key: k, Receivers: []netip.AddrPort{pub}}); err != nil {
		t.Fatal(err)
	}
	if err := tb.AddStream(Stream{Key: k}); !errors.Is(err, ErrExists) {
		t.Errorf("again: %v", err)
	}
	if err := tb.AddReceiver(k, netip.MustParseAddrPort("192.0.2.2:5000")); err != nil {
		t.Fatal(err)
	}
	if err := tb.AddReceiver(k, pub); err != nil {
		t.Errorf("adding a receiver twice: %v", err)
	}
	if err := tb.AddReceiver(k, netip.MustParseAddrPort("192.0.2.3:5000")); !errors.Is(err, ErrLimit) {
		t.Errorf("third receiver: %v, want ErrLimit", err)
	}
	if err := tb.AddStream(Stream{Key: StreamKey{Dst: dst, SSRC: 1, HasSSRC: true}}); err != nil {
		t.Fatal(err)
	}
	if err := tb.AddStream(Stream{Key: StreamKey{Dst: dst, SSRC: 2, HasSSRC: true}}); !errors.Is(err, ErrLimit) {
		t.Errorf("third stream: %v, want ErrLimit", err)
	}
	// Even with loopback allowed, the server's own port is refused: it
	// would loop.
	cfg := Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}}
	cfg.Policy.Loopback = true
	lab, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	own := lab.Addrs()[0]
	if err := lab.Table().AddStream(Stream{Key: StreamKey{Dst: own}, Receivers: []netip.AddrPort{own}}); !errors.Is(err, ErrRefused) {
		t.Errorf("receiver = own port: %v, want ErrRefused", err)
	}
	if err := lab.Table().AddStream(Stream{Key: StreamKey{Dst: own}, Receivers: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}}); err != nil {
		t.Errorf("loopback receiver in a lab: %v", err)
	}
}

// TestRouteAllocs keeps the data path free of allocations.
func TestRouteAllocs(t *testing.T) {
	p, pv, in := benchSetup(t, 16)
	if a := testing.AllocsPerRun(100, func() { routeAll(p, pv, in) }); a != 0 {
		t.Errorf("route allocates %v times per batch", a)
	}
}

func benchSetup(tb testing.TB, fan int) (*path, *portView, []udpio.Message) {
	dst := netip.MustParseAddrPort("127.0.0.1:5004")
	tab := newTable([]netip.AddrPort{dst}, 10, 1024, nil)
	st := Stream{Key: StreamKey{Dst: dst}}
	for i := range fan {
		st.Receivers = append(st.Receivers, netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(10000+i)))
	}
	if err := tab.AddStream(st); err != nil {
		tb.Fatal(err)
	}
	in := udpio.NewMessages(64, 0)
	for i := range in {
		in[i].N = copy(in[i].Buf, rtpPacket(42, uint16(i)))
		in[i].Addr = netip.MustParseAddrPort("198.51.100.1:4000")
	}
	sink := 0
	p := newPath(256, func(out []udpio.Message) { sink += len(out) })
	return p, &tab.load().ports[0], in
}

func routeAll(p *path, pv *portView, in []udpio.Message) {
	p.route(pv, in, 1)
	p.flush(p.out)
	p.out = p.out[:0]
}

// BenchmarkRoute measures the routing of one 64-packet batch of 200-byte
// RTP (no system calls): ns/op divided by 64 is the cost per packet.
func BenchmarkRoute(b *testing.B) {
	for _, fan := range []int{1, 16} {
		b.Run(map[int]string{1: "1to1", 16: "1to16"}[fan], func(b *testing.B) {
			p, pv, in := benchSetup(b, fan)
			b.ReportAllocs()
			for b.Loop() {
				routeAll(p, pv, in)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(in)), "ns/packet")
		})
	}
}
