package turn

import (
	"bytes"
	"github.com/traverse-rtc/traverse/internal/testkit"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/traverse-rtc/traverse/internal/logging"
	"github.com/traverse-rtc/traverse/internal/logging/logtest"
	"github.com/traverse-rtc/traverse/internal/metricstest"
)

// newSTUNClientFrom is newSTUNClient with the client's socket on src (a
// loopback address other than 127.0.0.1 is another source).
func newSTUNClientFrom(t testing.TB, src string, server netip.AddrPort, user, pass string) *stunClient {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(src), 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &stunClient{t: t, c: c, server: server, user: user, pass: pass}
}

// TestRESTCredentialLimits mounts issue 10's item 8b: REST user names with
// a far-future expiry, or a "+" before it, correctly signed, were accepted.
// Now EXPIRY must be digits only and at most RESTMaxLifetime ahead.
func TestRESTCredentialLimits(t *testing.T) {
	verifyNoLeaks(t)
	const secret = "s3cret"
	s, _ := newTestServer(t, func(c *Config) { c.AuthSecret = secret })
	now := time.Now()
	signed := func(name string) (string, string) { return name, restPassword(secret, name) }
	exp := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).Unix(), 10) }
	for _, tc := range []struct {
		name string
		want int
	}{
		{exp(time.Hour) + ":bob", 0},
		{exp(23*time.Hour) + ":bob", 0},
		{exp(10*365*24*time.Hour) + ":bob", 401}, // ten years
		{"999999999999:bob", 401},                // year 33658
		{"+" + exp(time.Hour) + ":bob", 401},     // strconv takes "+123"
		{"-" + exp(time.Hour) + ":bob", 401},
		{" " + exp(time.Hour) + ":bob", 401},
		{exp(time.Hour) + " :bob", 401},
	} {
		u, p := signed(tc.name)
		if code := errCode(newSTUNClient(t, s.Addr(), u, p).do(stun.MethodAllocate, requestedUDP())); code != tc.want {
			t.Errorf("REST user %q: code %d, want %d", tc.name, code, tc.want)
		}
	}
	if got := testutil.ToFloat64(s.m.authFailures.WithLabelValues("lifetime_too_long")); got != 2 {
		t.Errorf("lifetime_too_long = %v, want 2", got)
	}
	// The cap is configurable (and negative lifts it).
	s2, _ := newTestServer(t, func(c *Config) { c.AuthSecret = secret; c.RESTMaxLifetime = -1 })
	u, p := signed(exp(10*365*24*time.Hour) + ":bob")
	newSTUNClient(t, s2.Addr(), u, p).allocate()
}

// TestNonceReplay mounts issue 10's item 8c: an authenticated Allocate
// captured on the wire and replayed from another port of the same address
// created an allocation. The nonce is bound to the 5-tuple: the replay gets
// 438 and no allocation; the original still works.
func TestNonceReplay(t *testing.T) {
	verifyNoLeaks(t)
	s, _ := newTestServer(t, nil)
	victim := newSTUNClient(t, s.Addr(), testUser, testPass)
	resp, err := victim.roundTrip(stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestedUDP()))
	if err != nil || errCode(resp) != 401 {
		t.Fatalf("challenge: %v %d", err, errCode(resp))
	}
	var realm stun.Realm
	var nonce stun.Nonce
	if realm.GetFrom(resp) != nil || nonce.GetFrom(resp) != nil {
		t.Fatal("401 without realm or nonce")
	}
	captured := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestedUDP(),
		stun.NewUsername(testUser), realm, nonce, stun.NewLongTermIntegrity(testUser, string(realm), testPass), stun.Fingerprint)
	raw := append([]byte(nil), captured.Raw...)

	// The attacker replays the bytes from a second socket first.
	attacker := newSTUNClient(t, s.Addr(), "", "")
	resp, err = attacker.roundTrip(&stun.Message{Raw: raw, TransactionID: captured.TransactionID})
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	if code := errCode(resp); code != 438 {
		t.Errorf("replay from another port: code %d, want 438", code)
	}
	if n := s.Allocations(); n != 0 {
		t.Fatalf("the replay made %d allocations", n)
	}
	// The victim's own request is good.
	resp, err = victim.roundTrip(&stun.Message{Raw: raw, TransactionID: captured.TransactionID})
	if err != nil || errCode(resp) != 0 {
		t.Fatalf("original: %v, code %d", err, errCode(resp))
	}
	if n := s.Allocations(); n != 1 {
		t.Fatalf("allocations = %d, want 1", n)
	}
}

// TestUnauthAnswers mounts issue 10's item 6: answers to unauthenticated
// requests (401s here) were 5 times the request's bytes, with SOFTWARE,
// and unlimited. Now a 401 carries ERROR-CODE, REALM, NONCE and (when
// asked) FINGERPRINT only, and a source gets at most UnauthAnswerRate of
// them per second (burst of five seconds' worth); the rest are dropped and
// counted, while another source still allocates.
func TestUnauthAnswers(t *testing.T) {
	verifyNoLeaks(t)
	s, _ := newTestServer(t, func(c *Config) { c.Software = "traverse"; c.UnauthAnswerRate = 10 })
	c := newSTUNClient(t, s.Addr(), "", "")
	// What pion and coturn clients send first: Allocate, REQUESTED-
	// TRANSPORT, FINGERPRINT.
	req := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestedUDP(), stun.Fingerprint)
	resp, err := c.roundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	ratio := float64(len(resp.Raw)) / float64(len(req.Raw))
	t.Logf("401: request %d bytes, answer %d bytes, ratio %.2f", len(req.Raw), len(resp.Raw), ratio)
	for _, a := range resp.Attributes {
		switch a.Type {
		case stun.AttrErrorCode, stun.AttrRealm, stun.AttrNonce, stun.AttrFingerprint:
		default:
			t.Errorf("401 carries %v", a.Type)
		}
	}
	if ratio > 3 {
		t.Errorf("401 is %.2f times the request, want at most 3", ratio)
	}
	// A bare 20-byte header: the worst case.
	bare := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest))
	if resp, err = c.roundTrip(bare); err != nil {
		t.Fatal(err)
	}
	if r := float64(len(resp.Raw)) / float64(len(bare.Raw)); r > 4.5 {
		t.Errorf("401 to a bare header is %.2f times it", r)
	}

	// Flood from one source, bounded: 400 requests as fast as the socket
	// takes them, answers read meanwhile.
	const flood = 400
	var answered, answeredBytes, sentBytes int
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			_ = c.c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			n, _, err := c.c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			answered++
			answeredBytes += n
		}
	}()
	start := time.Now()
	for i := 0; i < flood; i++ {
		m := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestedUDP(), stun.Fingerprint)
		if _, err := c.c.WriteToUDPAddrPort(m.Raw, s.Addr()); err != nil {
			t.Fatal(err)
		}
		sentBytes += len(m.Raw)
		if i == flood/2 {
			// Meanwhile a client from another source allocates.
			newSTUNClientFrom(t, "127.0.0.2", s.Addr(), testUser, testPass).allocate()
		}
	}
	elapsed := time.Since(start)
	<-done
	// Burst 50 (two of them used above) plus 10 per second.
	limit := 50 + int(10*elapsed.Seconds()+1)
	t.Logf("flood: %d requests (%d bytes) in %v, %d answered (%d bytes): %.2f bytes out per byte in",
		flood, sentBytes, elapsed, answered, answeredBytes, float64(answeredBytes)/float64(sentBytes))
	if answered > limit {
		t.Errorf("answered %d of %d, want at most %d", answered, flood, limit)
	}
	if got := testutil.ToFloat64(s.m.limited.WithLabelValues("unauth_answers")); got < float64(flood-limit) {
		t.Errorf("unauth_answers limited = %v, want at least %d", got, flood-limit)
	}
}

// TestAllocationFlood mounts issue 10's item 5 (TURN, allocations): one
// user made 16,420 allocations in 15 s. With the defaults a user gets 100
// (486 beyond), and with a per-source rate a source gets its burst and
// then its rate, while a client from another source still allocates.
func TestAllocationFlood(t *testing.T) {
	verifyNoLeaks(t)
	s, _ := newTestServer(t, nil)
	if s.cfg.MaxAllocationsPerUser != 100 || s.cfg.MaxAllocations != 10000 || s.cfg.AllocationRate != 20 {
		t.Fatalf("defaults: per user %d, total %d, rate %d", s.cfg.MaxAllocationsPerUser, s.cfg.MaxAllocations, s.cfg.AllocationRate)
	}
	// 110 allocations of one user, 22 from each of five sources (within
	// each source's burst of 100): 100 succeed, 10 get 486.
	var ok, quota int
	// allocate counts an allocation by its outcome: success or 486.
	allocate := func(i int, c *stunClient) {
		switch code := errCode(c.do(stun.MethodAllocate, requestedUDP())); code {
		case 0:
			ok++
		case 486:
			quota++
		default:
			t.Fatalf("allocation %d: code %d", i, code)
		}
	}
	for i := 0; i < 110; i++ {
		// Each client keeps its socket until the test ends: closed, its
		// port could come back to a later client, whose Allocate would
		// then meet the live allocation of that 5-tuple (437).
		allocate(i, newSTUNClientFrom(t, "127.0.0."+strconv.Itoa(1+i%5), s.Addr(), testUser, testPass))
	}
	if ok != 100 || quota != 10 {
		t.Errorf("one user: %d allocated, %d refused; want 100 and 10", ok, quota)
	}

	// The per-source rate: many users from one source, bounded flood.
	s2, _ := newTestServer(t, func(c *Config) {
		c.AllocationRate = 5 // burst 25
		for i := 0; i < 80; i++ {
			c.Users["u"+strconv.Itoa(i)] = "pw"
		}
	})
	ok, quota = 0, 0
	start := time.Now()
	var heap0, heap1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&heap0)
	for i := 0; i < 80; i++ {
		allocate(i, newSTUNClient(t, s2.Addr(), "u"+strconv.Itoa(i), "pw"))
		if i == 40 {
			newSTUNClientFrom(t, "127.0.0.2", s2.Addr(), testUser, testPass).allocate()
		}
	}
	limit := 25 + int(5*time.Since(start).Seconds()+1)
	runtime.GC()
	runtime.ReadMemStats(&heap1)
	t.Logf("one source: %d allocated, %d refused in %v; heap %+d KiB", ok, quota, time.Since(start), (int64(heap1.HeapInuse)-int64(heap0.HeapInuse))>>10)
	if ok > limit || ok < 25 {
		t.Errorf("one source allocated %d, want 25 to %d", ok, limit)
	}
	if got := testutil.ToFloat64(s2.m.limited.WithLabelValues("allocate")); got != float64(quota) {
		t.Errorf("allocate limited = %v, want %d", got, quota)
	}
}

// TestStreamFlood mounts issue 10's item 5 (TURN over TCP): idle,
// never-authenticated connections from one address held the connection
// cap, and TCP clients were refused for everyone. Now one source gets at
// most MaxStreamConnsPerSource, a connection without an authenticated
// request is closed after StreamAuthTimeout, one with no allocation after
// StreamIdleTimeout, and a client from another source allocates over TCP
// meanwhile.
func TestStreamFlood(t *testing.T) {
	verifyNoLeaks(t)
	s, _ := newTestServer(t, func(c *Config) {
		c.MaxStreamConns = 100
		c.MaxStreamConnsPerSource = 40
		c.StreamAuthTimeout = time.Second
		c.StreamIdleTimeout = 2 * time.Second
	})
	const flood = 150 // bounded: a quarter of it over the total cap
	conns := make([]net.Conn, 0, flood)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < flood; i++ {
		c, err := net.Dial("tcp4", s.TCPAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// The server's view settles: at most 40 of them held.
	held := 0
	testkit.WaitFor(t, 5*time.Second, "flood accepted", func() bool {
		s.mu.RLock()
		held = len(s.streams)
		s.mu.RUnlock()
		refused := testutil.ToFloat64(s.m.quotaHits.WithLabelValues("stream_conns_source")) +
			testutil.ToFloat64(s.m.quotaHits.WithLabelValues("stream_conns"))
		return held+int(refused) == flood
	})
	if held > 40 {
		t.Errorf("%d connections held from one source, want at most 40", held)
	}
	// Meanwhile a client from another source allocates over TCP.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	gc, err := d.Dial("tcp4", s.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	good := &stunClient{t: t, tcp: gc, server: s.TCPAddr(), user: testUser, pass: testPass}
	good.allocate()

	// The flood's connections are closed by the server within the
	// unauthenticated deadline (plus a sweep): every read ends.
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := 0
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					mu.Lock()
					open++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if open > 0 {
		t.Errorf("%d unauthenticated connections still open after 5 s", open)
	}
	if got := testutil.ToFloat64(s.m.timeouts.WithLabelValues("auth")); got < 1 || got > 40 {
		t.Errorf("auth timeouts = %v, want 1 to 40", got)
	}

	// An authenticated connection without an allocation is closed once
	// idle; the good client's, with its allocation, stays.
	ic, err := d.Dial("tcp4", s.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer ic.Close()
	idle := &stunClient{t: t, tcp: ic, server: s.TCPAddr(), user: testUser, pass: testPass}
	if code := errCode(idle.do(stun.MethodRefresh)); code != 437 {
		t.Fatalf("authenticated Refresh without allocation: code %d", code)
	}
	_ = ic.SetReadDeadline(time.Now().Add(6 * time.Second))
	if _, err := ic.Read(make([]byte, 1)); err == nil {
		t.Error("idle connection: read data, want the end")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Error("idle connection still open after 6 s")
	}
	if code := errCode(good.do(stun.MethodRefresh)); code != 0 {
		t.Errorf("good client's Refresh after the idle sweep: code %d", code)
	}
	if got := testutil.ToFloat64(s.m.timeouts.WithLabelValues("idle")); got != 1 {
		t.Errorf("idle timeouts = %v, want 1", got)
	}
}

// TestOutsideLogs mounts issue 10's item 7 on TURN: an authenticated
// client with a 450-byte REST user name asks for 200 refused peers, and
// 200 malformed datagrams arrive. Every event is counted, but the log gets
// a sample (internal/logging: 10 lines of one message per second) with
// outside strings cut to 256 bytes; before, each refused peer was a debug
// line with the whole name.
func TestOutsideLogs(t *testing.T) {
	verifyNoLeaks(t)
	var logs logtest.Buffer
	const secret = "s3cret"
	log, err := logging.New(&logs, logging.Config{Level: "debug"})
	if err != nil {
		t.Fatal(err)
	}
	lreg := prometheus.NewRegistry()
	if err := logging.Register(log, lreg); err != nil {
		t.Fatal(err)
	}
	suppressed := func() float64 { return metricstest.Value(t, lreg, "traverse_log_suppressed_total") }
	s, _ := newTestServer(t, func(c *Config) {
		c.AuthSecret = secret
		c.Log = log
	})
	u, p := RESTCredentials(secret, strings.Repeat("m", 450), time.Hour, time.Now())
	c := newSTUNClient(t, s.Addr(), u, p)
	c.allocate()
	start := time.Now()
	const n = 200
	for i := 0; i < n; i++ {
		if code := errCode(c.do(stun.MethodCreatePermission, peerAttr(netip.MustParseAddrPort("10.0.0.1:9")))); code != 403 {
			t.Fatalf("refused peer: code %d", code)
		}
	}
	junk := append([]byte{0, 1, 0xff, 0xf0}, bytes.Repeat([]byte("x"), 996)...)
	for i := 0; i < n; i++ {
		if _, err := c.c.WriteToUDPAddrPort(junk, s.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, 5*time.Second, "malformed datagrams counted", func() bool {
		return testutil.ToFloat64(s.m.badUDP) >= n
	})
	elapsed := time.Since(start)
	if got := testutil.ToFloat64(s.m.refusedPeers); got != n {
		t.Errorf("refused peers = %v, want %d", got, n)
	}
	lines := logs.Lines()
	outside := 0
	for _, l := range lines {
		if len(l) > logging.DefaultMaxValue+200 {
			t.Errorf("log line of %d bytes: %.120s...", len(l), l)
		}
		if strings.Contains(l, "peer refused") || strings.Contains(l, "malformed") {
			outside++
		}
	}
	// Two messages, each at most DefaultBurst lines per started interval.
	limit := 2 * logging.DefaultBurst * (int(elapsed/logging.DefaultInterval) + 1)
	t.Logf("%d events in %v: %d log lines about them, %v suppressed", 2*n, elapsed, outside, suppressed())
	if outside > limit {
		t.Errorf("%d log lines about outside input, want at most %d", outside, limit)
	}
	if suppressed() == 0 {
		t.Error("no suppressed log line counted")
	}
}
