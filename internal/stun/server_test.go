package stun_test

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"github.com/traverse-rtc/traverse/internal/testkit"
	"io"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	pstun "github.com/pion/stun/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/traverse-rtc/traverse/internal/metricstest"
	"github.com/traverse-rtc/traverse/internal/stun"
	"github.com/traverse-rtc/traverse/internal/stun/stuntest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func request(t testing.TB, setters ...pstun.Setter) *pstun.Message {
	t.Helper()
	m, err := pstun.Build(append([]pstun.Setter{pstun.TransactionID, pstun.BindingRequest}, setters...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// exchange sends req to dst from c and returns the answer and its source.
func exchange(t testing.TB, c *net.UDPConn, dst netip.AddrPort, req *pstun.Message) (*pstun.Message, netip.AddrPort) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(req.Raw, dst); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no answer from %s: %v", dst, err)
	}
	m := &pstun.Message{Raw: buf[:n]}
	if err := m.Decode(); err != nil {
		t.Fatal(err)
	}
	if m.TransactionID != req.TransactionID {
		t.Fatalf("transaction id mismatch")
	}
	return m, from
}

func addrOf(t testing.TB, m *pstun.Message, g interface{ GetFrom(*pstun.Message) error }) string {
	t.Helper()
	if err := g.GetFrom(m); err != nil {
		t.Fatalf("%T: %v", g, err)
	}
	return g.(interface{ String() string }).String()
}

func TestRFC5780Sockets(t *testing.T) {
	s := stuntest.RFC5780(t)
	ep := s.Endpoints()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local := c.LocalAddr().String()
	for via := range 4 {
		for _, change := range []uint32{0, 2, 4, 6} {
			v := make([]byte, 4)
			binary.BigEndian.PutUint32(v, change)
			req := request(t, pstun.RawAttribute{Type: pstun.AttrChangeRequest, Value: v}, pstun.Fingerprint)
			m, from := exchange(t, c, ep[via], req)
			want := via
			if change&4 != 0 {
				want ^= 1
			}
			if change&2 != 0 {
				want ^= 2
			}
			if from != ep[want] {
				t.Errorf("via %s change %d: answer from %s, want %s", ep[via], change, from, ep[want])
			}
			if got := addrOf(t, m, &pstun.XORMappedAddress{}); got != local {
				t.Errorf("xor-mapped %s, want %s", got, local)
			}
			if got := addrOf(t, m, &pstun.ResponseOrigin{}); got != ep[want].String() {
				t.Errorf("response-origin %s, want %s", got, ep[want])
			}
			if got := addrOf(t, m, &pstun.OtherAddress{}); got != ep[via^3].String() {
				t.Errorf("other-address %s, want %s", got, ep[via^3])
			}
		}
	}
	// RESPONSE-PORT sends the answer to another port of the same IP.
	other, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	v := make([]byte, 4)
	binary.BigEndian.PutUint16(v, uint16(other.LocalAddr().(*net.UDPAddr).Port))
	req := request(t, pstun.RawAttribute{Type: pstun.AttrResponsePort, Value: v})
	if _, err := c.WriteToUDPAddrPort(req.Raw, ep[0]); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	_ = other.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, _, err := other.ReadFromUDPAddrPort(buf); err != nil {
		t.Fatalf("response-port: %v", err)
	}
}

func TestStreams(t *testing.T) {
	s := stuntest.Start(t, stun.Config{TLSListen: netip.MustParseAddrPort("127.0.0.1:0")}, nil)
	for _, tc := range []struct {
		name string
		dial func() (net.Conn, error)
	}{
		{"tcp", func() (net.Conn, error) { return net.Dial("tcp", s.TCPAddr().String()) }},
		{"tls", func() (net.Conn, error) {
			return tls.Dial("tcp", s.TLSAddr().String(), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // self-signed test server
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.dial()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			// Two requests in one write: the stream framing splits them.
			r1, r2 := request(t, pstun.Fingerprint), request(t)
			if _, err := c.Write(append(append([]byte(nil), r1.Raw...), r2.Raw...)); err != nil {
				t.Fatal(err)
			}
			for _, req := range []*pstun.Message{r1, r2} {
				m := &pstun.Message{}
				hdr := make([]byte, 20)
				if _, err := io.ReadFull(c, hdr); err != nil {
					t.Fatal(err)
				}
				body := make([]byte, binary.BigEndian.Uint16(hdr[2:4]))
				if _, err := io.ReadFull(c, body); err != nil {
					t.Fatal(err)
				}
				m.Raw = append(hdr, body...)
				if err := m.Decode(); err != nil || m.TransactionID != req.TransactionID || m.Type != pstun.BindingSuccess {
					t.Fatalf("bad answer %v %v", m, err)
				}
				if got, want := addrOf(t, m, &pstun.XORMappedAddress{}), c.LocalAddr().String(); got != want {
					t.Errorf("xor-mapped %s, want %s", got, want)
				}
			}
		})
	}
}

func TestDropCounters(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := stuntest.Start(t, stun.Config{}, reg)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bad := request(t, pstun.Fingerprint).Raw
	bad[len(bad)-1] ^= 0xff
	for _, b := range [][]byte{[]byte("hello"), {0x80, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18}, bad} {
		if _, err := c.WriteToUDPAddrPort(b, s.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	// A good request after the bad ones: once answered, the drops before
	// it have been counted (one socket, in order).
	exchange(t, c, s.Addr(), request(t))
	for _, reason := range []string{"short", "not_stun", "bad_fingerprint"} {
		testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("dropped{reason=%q} = 1", reason), func() bool {
			return metricstest.Value(t, reg, "traverse_stun_dropped_total", "reason", reason) == 1
		})
	}
}

// Run returns within 5 s of cancel, every socket can be bound again at once
// and no goroutine is left behind.
func TestShutdownReleasesSockets(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	s, err := stun.New(stun.Config{Listen: netip.MustParseAddrPort("127.0.0.1:0"), OtherAddress: netip.MustParseAddr("127.0.0.2"), TLSListen: netip.MustParseAddrPort("127.0.0.1:0"), Readers: 2})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	testkit.WaitFor(t, 10*time.Second, "ready", func() bool { return s.Ready() == nil })
	// An open TCP connection must not hold shutdown up.
	tc, err := net.Dial("tcp", s.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	exchange(t, c, s.Addr(), request(t))

	start := time.Now()
	testkit.Stop(t, "Run", cancel, done)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Run returned %s after cancel, want within 5s", d)
	} else {
		t.Logf("shutdown took %s", d)
	}
	if s.Ready() == nil {
		t.Error("ready after shutdown")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	for _, a := range s.Endpoints() {
		pc, err := net.ListenPacket("udp", a.String())
		if err != nil {
			t.Errorf("udp %s not released: %v", a, err)
			continue
		}
		pc.Close()
	}
	for _, a := range []netip.AddrPort{s.TCPAddr(), s.TLSAddr()} {
		ln, err := net.Listen("tcp", a.String())
		if err != nil {
			t.Errorf("tcp %s not released: %v", a, err)
			continue
		}
		ln.Close()
	}
	goleak.VerifyNone(t)
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []stun.Config{
		{Listen: netip.MustParseAddrPort("0.0.0.0:0"), OtherAddress: netip.MustParseAddr("127.0.0.2")},
		{Listen: netip.MustParseAddrPort("127.0.0.1:0"), OtherAddress: netip.MustParseAddr("127.0.0.1")},
		{Listen: netip.MustParseAddrPort("127.0.0.1:0"), OtherAddress: netip.MustParseAddr("::1")},
		{Listen: netip.MustParseAddrPort("127.0.0.1:0"), TLSCert: "x"},
	} {
		if _, err := stun.New(c); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
}

func TestIPv6(t *testing.T) {
	c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer c.Close()
	s := stuntest.Start(t, stun.Config{Listen: netip.MustParseAddrPort("[::1]:0")}, nil)
	m, _ := exchange(t, c, s.Addr(), request(t, pstun.Fingerprint))
	if got, want := addrOf(t, m, &pstun.XORMappedAddress{}), c.LocalAddr().String(); got != want {
		t.Errorf("xor-mapped %s, want %s", got, want)
	}
}

// The whole UDP path (batched read, handler, batched write, counters)
// allocates nothing per request: a few thousand transactions through a
// running server cost (almost) no heap allocations in the process.
func TestServeLoopAllocs(t *testing.T) {
	// The rate limiter runs, but lets all of these through.
	s := stuntest.Start(t, stun.Config{OtherAddress: netip.MustParseAddr("127.0.0.2"), Rate: 1_000_000}, nil)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := request(t, pstun.Fingerprint).Raw
	chg := request(t, pstun.RawAttribute{Type: pstun.AttrChangeRequest, Value: []byte{0, 0, 0, 6}}).Raw
	buf := make([]byte, 2048)
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	roundTrip := func(b []byte) {
		if _, err := c.WriteToUDPAddrPort(b, s.Addr()); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatal(err)
		}
	}
	for range 100 { // warm up
		roundTrip(req)
		roundTrip(chg)
	}
	const n = 3000
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		roundTrip(req)
		roundTrip(chg)
	}
	runtime.ReadMemStats(&after)
	if d := after.Mallocs - before.Mallocs; d > n/20 {
		t.Errorf("%d heap allocations for %d transactions", d, 2*n)
	} else {
		t.Logf("%d heap allocations in the process for %d transactions", d, 2*n)
	}
}

func TestMaxTCPConns(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := stuntest.Start(t, stun.Config{MaxTCPConns: 1}, reg)
	first, err := net.Dial("tcp", s.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	// The first is being served once it answers.
	req := request(t)
	_ = first.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := first.Write(req.Raw); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(first, make([]byte, 20)); err != nil {
		t.Fatal(err)
	}
	second, err := net.Dial("tcp", s.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	_ = second.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := second.Read(make([]byte, 1)); err == nil {
		t.Fatal("second connection over the limit was served")
	}
	if v := metricstest.Value(t, reg, "traverse_stun_tcp_refused_total", "reason", "total"); v != 1 {
		t.Errorf("refused counter %v, want 1", v)
	}
}
