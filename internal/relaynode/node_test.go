package relaynode

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/traverse-rtc/traverse/internal/relayproto"
	"github.com/traverse-rtc/traverse/internal/testkit"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

var loopback = netip.MustParseAddrPort("127.0.0.1:0")

type scene struct {
	t    *testing.T
	node *Node
	reg  *prometheus.Registry
	key  ed25519.PrivateKey
}

func newScene(t *testing.T, mod func(*Config)) *scene {
	t.Helper()
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	reg := prometheus.NewRegistry()
	cfg := Config{ID: "r1", Listen: loopback, GrantKey: pub, Registerer: reg}
	if mod != nil {
		mod(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		n.Close()
	})
	testkit.WaitFor(t, 5*time.Second, "node ready", func() bool { return n.Ready() == nil })
	return &scene{t: t, node: n, reg: reg, key: key}
}

func (s *scene) grant(sess relayproto.Session, side uint8, node string, ttl time.Duration, key ed25519.PrivateKey) []byte {
	s.t.Helper()
	if key == nil {
		key = s.key
	}
	g, err := relayproto.AppendGrant(nil, relayproto.Grant{Session: sess, Side: side, Node: node, Expires: time.Now().Add(ttl)}, key)
	if err != nil {
		s.t.Fatal(err)
	}
	return g
}

func newSession() relayproto.Session {
	var s relayproto.Session
	_, _ = rand.Read(s[:])
	return s
}

func socket(t *testing.T) *net.UDPConn {
	t.Helper()
	pc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(loopback))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// pair binds two links to one session, concurrently.
func (s *scene) pair(sess relayproto.Session) (*Link, *Link) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	type res struct {
		l   *Link
		err error
	}
	ch := make(chan res, 2)
	for side := range uint8(2) {
		g := s.grant(sess, side, "r1", time.Minute, nil)
		pc := socket(s.t)
		go func() {
			l, err := Bind(ctx, pc, s.node.Addr(), g)
			ch <- res{l, err}
		}()
	}
	var ls []*Link
	for range 2 {
		r := <-ch
		if r.err != nil {
			s.t.Fatal(r.err)
		}
		s.t.Cleanup(func() { r.l.Close() })
		ls = append(ls, r.l)
	}
	if ls[0].side == 1 {
		ls[0], ls[1] = ls[1], ls[0]
	}
	return ls[0], ls[1]
}

func (s *scene) drops(reason int) float64 {
	return testutil.ToFloat64(s.node.m.dropped[reason])
}

func read(t *testing.T, l *Link, d time.Duration) ([]byte, error) {
	t.Helper()
	_ = l.SetReadDeadline(time.Now().Add(d))
	b := make([]byte, 1500)
	n, from, err := l.ReadFrom(b)
	if err == nil && from != l.node {
		t.Errorf("datagram from %s, want the node %s", from, l.node)
	}
	return b[:n], err
}

func TestRelayBothWays(t *testing.T) {
	s := newScene(t, nil)
	a, b := s.pair(newSession())
	for i := range 200 {
		msg := []byte{byte(i), 'a'}
		if err := a.WriteTo(msg, netip.AddrPort{}); err != nil {
			t.Fatal(err)
		}
		got, err := read(t, b, 2*time.Second)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("b got %q, %v; want %q", got, err, msg)
		}
		if err := b.WriteTo(msg[:1], netip.AddrPort{}); err != nil {
			t.Fatal(err)
		}
		if got, err := read(t, a, 2*time.Second); err != nil || !bytes.Equal(got, msg[:1]) {
			t.Fatalf("a got %q, %v", got, err)
		}
	}
	if got := testutil.ToFloat64(s.node.m.relayed); got != 400 {
		t.Errorf("relayed %v, want 400", got)
	}
}

// Each attack a third party can mount from its own address: data into a
// session, forged, foreign, expired grants, a captured grant replayed to
// take a live side, junk. Every one is dropped and counted, and the
// session's own traffic is untouched.
func TestAttacks(t *testing.T) {
	s := newScene(t, nil)
	sess := newSession()
	a, b := s.pair(sess)
	evil := socket(t)
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	send := func(p []byte) {
		if _, err := evil.WriteToUDPAddrPort(p, s.node.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	type attack struct {
		name   string
		p      []byte
		reason int
	}
	for _, at := range []attack{
		{"inject data", relayproto.AppendData(nil, []byte("evil")), dropUnbound},
		{"forged grant", relayproto.AppendBind(nil, s.grant(sess, 0, "r1", time.Minute, otherKey)), dropSignature},
		{"grant of another node", relayproto.AppendBind(nil, s.grant(sess, 0, "r2", time.Minute, nil)), dropOtherNode},
		{"expired grant", relayproto.AppendBind(nil, s.grant(sess, 0, "r1", -time.Second, nil)), dropExpired},
		{"captured grant replayed while the side is live", a.grant, dropHijack},
		{"bad grant", []byte{relayproto.TypeBind, 1, 2, 3}, dropBadGrant},
		{"junk", []byte{0x99, 1, 2}, dropMalformed},
	} {
		before := s.drops(at.reason)
		send(at.p)
		testkit.WaitFor(t, 2*time.Second, at.name+" counted", func() bool { return s.drops(at.reason) == before+1 })
		// The attacker's data after its bind attempt still goes nowhere.
		send(relayproto.AppendData(nil, []byte("evil")))
	}
	// Signature-altered grant: flip a byte of a real grant.
	g := s.grant(sess, 1, "r1", time.Minute, nil)
	g[12] ^= 1 // inside the session id
	before := s.drops(dropSignature)
	send(relayproto.AppendBind(nil, g))
	testkit.WaitFor(t, 2*time.Second, "altered grant counted", func() bool { return s.drops(dropSignature) == before+1 })

	// The peers still talk, and heard nothing of the attacker.
	if err := a.WriteTo([]byte("hello"), netip.AddrPort{}); err != nil {
		t.Fatal(err)
	}
	got, err := read(t, b, 2*time.Second)
	if err != nil || string(got) != "hello" {
		t.Fatalf("b got %q, %v", got, err)
	}
	if got, err := read(t, a, 200*time.Millisecond); err == nil {
		t.Errorf("a received %q", got)
	}
	// The attacker never received a relayed datagram.
	_ = evil.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 1500)
	for {
		n, _, err := evil.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		if n > 0 && buf[0] == relayproto.TypeData {
			t.Errorf("the attacker received relayed data %q", buf[1:n])
		}
	}
}

// A peer whose NAT moved it to another port binds again once its old
// address has been silent for RebindAfter.
func TestRebindAfterSilence(t *testing.T) {
	s := newScene(t, func(c *Config) { c.RebindAfter = 300 * time.Millisecond })
	sess := newSession()
	a, b := s.pair(sess)
	moved := socket(t)
	// a stops sending; from its new port it binds with the same grant.
	start := time.Now()
	var l2 *Link
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l2, err := Bind(ctx, moved, s.node.Addr(), a.grant[1:])
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if time.Since(start) < 300*time.Millisecond {
		t.Errorf("rebound after %s, before RebindAfter", time.Since(start))
	}
	if err := b.WriteTo([]byte("x"), netip.AddrPort{}); err != nil {
		t.Fatal(err)
	}
	if got, err := read(t, l2, 2*time.Second); err != nil || string(got) != "x" {
		t.Fatalf("moved peer got %q, %v", got, err)
	}
}

func TestSessionCap(t *testing.T) {
	s := newScene(t, func(c *Config) { c.MaxSessions = 1 })
	s.pair(newSession())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := Bind(ctx, socket(t), s.node.Addr(), s.grant(newSession(), 0, "r1", time.Minute, nil))
	if !errors.Is(err, ErrFull) {
		t.Fatalf("second session: %v, want ErrFull", err)
	}
	if s.drops(dropFull) == 0 {
		t.Error("refusal not counted")
	}
}

// The bandwidth cap holds: a sender offering four times the cap gets about
// the cap through, the rest dropped and counted.
func TestBandwidthCap(t *testing.T) {
	const rate = 800_000 // bits/s = 100 kB/s
	s := newScene(t, func(c *Config) { c.MaxBitrate = rate; c.Burst = 10_000 })
	a, b := s.pair(newSession())
	payload := make([]byte, 999) // 1000-byte frames
	const dur = 500 * time.Millisecond
	start := time.Now()
	sent := 0
	for time.Since(start) < dur && sent < 2000 {
		if err := a.WriteTo(payload, netip.AddrPort{}); err != nil {
			t.Fatal(err)
		}
		sent++
		if sent%10 == 0 {
			time.Sleep(5 * time.Millisecond) // pace the offer: ~400 kB/s
		}
	}
	elapsed := time.Since(start)
	got := 0
	for {
		if _, err := read(t, b, 300*time.Millisecond); err != nil {
			break
		}
		got++
	}
	allowed := (10_000 + elapsed.Seconds()*rate/8) / 1000
	t.Logf("offered %d frames in %s, %d relayed, cap allows %.0f", sent, elapsed, got, allowed)
	if float64(got) > allowed+1 || float64(got) < allowed*0.5 {
		t.Errorf("relayed %d frames, cap allows %.0f", got, allowed)
	}
	if d := s.drops(dropBandwidth); int(d) != sent-got {
		t.Errorf("bandwidth drops %v, want %d", d, sent-got)
	}
}

func TestSessionIdleExpiry(t *testing.T) {
	s := newScene(t, func(c *Config) { c.SessionIdle = 300 * time.Millisecond })
	a, b := s.pair(newSession())
	a.Close()
	b.Close()
	testkit.WaitFor(t, 3*time.Second, "session expired", func() bool {
		return testutil.ToFloat64(s.node.m.expired) == 1 && testutil.ToFloat64(s.node.m.sessions) == 0
	})
}

// FuzzHandle feeds the node's datagram handler arbitrary datagrams from
// two sources, seeded with valid binds: no panic, and nothing is ever
// forwarded to a source that did not bind with a valid grant.
func FuzzHandle(f *testing.F) {
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	n, err := New(Config{ID: "r1", Listen: loopback, GrantKey: pub, BindRate: 1 << 20})
	if err != nil {
		f.Fatal(err)
	}
	defer n.Close()
	sess := relayproto.Session{9}
	for side := range uint8(2) {
		g, _ := relayproto.AppendGrant(nil, relayproto.Grant{Session: sess, Side: side, Node: "r1", Expires: time.Now().Add(time.Hour)}, key)
		f.Add(relayproto.AppendBind(nil, g), side)
	}
	f.Add(relayproto.AppendData(nil, []byte("x")), uint8(0))
	f.Add([]byte{0, 1, 0, 0}, uint8(1))
	srcs := [2]netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:1000"), netip.MustParseAddrPort("192.0.2.2:2000")}
	out := udpio.NewMessages(1, 0)
	f.Fuzz(func(t *testing.T, p []byte, who uint8) {
		in := udpio.NewMessages(1, 0)
		in[0].N = copy(in[0].Buf, p)
		in[0].Addr = srcs[who%2]
		n.mu.Lock()
		defer n.mu.Unlock()
		if n.handle(&in[0], &out[0], n.now(), time.Now()) && len(p) > 0 && p[0] == relayproto.TypeData {
			if b, ok := n.byAddr[out[0].Addr]; !ok || !b.s.end[b.side].bound {
				t.Fatalf("forwarded to %s, which is not bound", out[0].Addr)
			}
		}
	})
}

// The data path does not allocate per datagram.
func TestDataPathAllocs(t *testing.T) {
	s := newScene(t, nil)
	a, _ := s.pair(newSession())
	in, out := udpio.NewMessages(1, 0), udpio.NewMessages(1, 0)
	in[0].N = copy(in[0].Buf, relayproto.AppendData(nil, make([]byte, 172)))
	in[0].Addr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(a.pc.LocalAddr().(*net.UDPAddr).Port))
	n := s.node
	allocs := testing.AllocsPerRun(1000, func() {
		n.mu.Lock()
		ok := n.handle(&in[0], &out[0], n.now(), time.Now())
		n.mu.Unlock()
		if !ok {
			t.Fatal("not forwarded")
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per relayed datagram", allocs)
	}
}

// One peer holding a grant cannot pin a slot alone: a session whose other
// side never binds is dropped after HalfSessionTTL, and the slot serves
// a new pair.
func TestHalfSessionExpires(t *testing.T) {
	s := newScene(t, func(c *Config) { c.MaxSessions = 1; c.HalfSessionTTL = 300 * time.Millisecond })
	g := s.grant(newSession(), 0, "r1", time.Minute, nil)
	pc := socket(t)
	if _, err := pc.WriteToUDPAddrPort(relayproto.AppendBind(nil, g), s.node.Addr()); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 2*time.Second, "half session held", func() bool { return testutil.ToFloat64(s.node.m.sessions) == 1 })
	testkit.WaitFor(t, 3*time.Second, "half session dropped", func() bool {
		return testutil.ToFloat64(s.node.m.expired) == 1 && testutil.ToFloat64(s.node.m.sessions) == 0
	})
	a, b := s.pair(newSession())
	if err := a.WriteTo([]byte("x"), netip.AddrPort{}); err != nil {
		t.Fatal(err)
	}
	if got, err := read(t, b, 2*time.Second); err != nil || string(got) != "x" {
		t.Fatalf("got %q, %v", got, err)
	}
}
