package turn

import (
	"github.com/traverse-rtc/traverse/internal/testkit"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestRefusedPeers: by default, permissions and channels to loopback,
// private, metadata and IPv6 loopback addresses get 403 Forbidden.
func TestRefusedPeers(t *testing.T) {
	verifyNoLeaks(t)
	s, _ := newTestServer(t, nil)
	c := newSTUNClient(t, s.Addr(), testUser, testPass)
	c.allocate()
	for _, p := range []string{"127.0.0.1:9", "10.0.0.1:9", "169.254.169.254:80", "[::1]:9", "[::ffff:127.0.0.1]:9", "100.64.1.1:9", "192.168.0.1:9"} {
		ap := netip.MustParseAddrPort(p)
		if code := errCode(c.do(stun.MethodCreatePermission, peerAttr(ap))); code != 403 {
			t.Errorf("CreatePermission %s: code %d, want 403", p, code)
		}
		if code := errCode(c.do(stun.MethodChannelBind, channelAttr(0x4001), peerAttr(ap))); code != 403 {
			t.Errorf("ChannelBind %s: code %d, want 403", p, code)
		}
	}
	if got := testutil.ToFloat64(s.m.refusedPeers); got != 14 {
		t.Errorf("refused peers counter = %v, want 14", got)
	}
	// A public address is fine.
	if code := errCode(c.do(stun.MethodCreatePermission, peerAttr(netip.MustParseAddrPort("8.8.8.8:53")))); code != 0 {
		t.Errorf("CreatePermission 8.8.8.8: code %d", code)
	}
	// Even with loopback allowed, the server's own listener is refused.
	s2, _ := newTestServer(t, func(c *Config) { c.AllowLoopbackPeers = true })
	c2 := newSTUNClient(t, s2.Addr(), testUser, testPass)
	relayed := c2.allocate()
	if code := errCode(c2.do(stun.MethodChannelBind, channelAttr(0x4001), peerAttr(s2.Addr()))); code != 403 {
		t.Errorf("ChannelBind to own listener: code %d, want 403", code)
	}
	// Relay to relay (two clients of one server) is allowed.
	if code := errCode(c2.do(stun.MethodChannelBind, channelAttr(0x4002), peerAttr(relayed))); code != 0 {
		t.Errorf("ChannelBind to a relayed address: code %d, want success", code)
	}
	if code := errCode(c2.do(stun.MethodChannelBind, channelAttr(0x4001), peerAttr(netip.MustParseAddrPort("127.0.0.1:9")))); code != 0 {
		t.Errorf("ChannelBind loopback with opt-in: code %d", code)
	}
}

func TestAuthErrors(t *testing.T) {
	verifyNoLeaks(t)
	const secret = "s3cret"
	s, _ := newTestServer(t, func(c *Config) { c.AuthSecret = secret })

	// No credentials: 401 with realm and nonce; wrong password: 401.
	bad := newSTUNClient(t, s.Addr(), testUser, "wrong")
	if code := errCode(bad.do(stun.MethodAllocate, requestedUDP())); code != 401 {
		t.Errorf("wrong password: code %d, want 401", code)
	}
	unknown := newSTUNClient(t, s.Addr(), "mallory", testPass)
	if code := errCode(unknown.do(stun.MethodAllocate, requestedUDP())); code != 401 {
		t.Errorf("unknown user: code %d, want 401", code)
	}

	// REST credentials: valid ones allocate, expired ones get 401.
	now := time.Now()
	u, p := RESTCredentials(secret, "bob", time.Hour, now)
	newSTUNClient(t, s.Addr(), u, p).allocate()
	u, p = RESTCredentials(secret, "bob", -time.Minute, now)
	if code := errCode(newSTUNClient(t, s.Addr(), u, p).do(stun.MethodAllocate, requestedUDP())); code != 401 {
		t.Errorf("expired REST credential: code %d, want 401", code)
	}
	u = strconv.FormatInt(now.Add(time.Hour).Unix(), 10)
	if code := errCode(newSTUNClient(t, s.Addr(), u, "forged").do(stun.MethodAllocate, requestedUDP())); code != 401 {
		t.Errorf("forged REST credential: code %d, want 401", code)
	}

	// Stale nonce: 438 with a fresh nonce.
	c := newSTUNClient(t, s.Addr(), testUser, testPass)
	c.allocate()
	key := fiveTuple{protoUDP, c.c.LocalAddr().(*net.UDPAddr).AddrPort()}
	c.nonce = s.nonces.issue(key, time.Now().Add(-time.Hour))
	c.noRetryAuth = true
	resp := c.do(stun.MethodRefresh)
	if code := errCode(resp); code != 438 {
		t.Fatalf("stale nonce: code %d, want 438", code)
	}
	if c.nonce == "" || !s.nonces.valid(c.nonce, key, time.Now(), false) {
		t.Errorf("438 did not carry a fresh nonce")
	}
	c.noRetryAuth = false
	if code := errCode(c.do(stun.MethodRefresh)); code != 0 {
		t.Errorf("refresh with the new nonce: code %d", code)
	}
	for reason, min := range map[string]float64{"bad_integrity": 1, "unknown_user": 1, "expired_credential": 1, "stale_nonce": 1} {
		if got := testutil.ToFloat64(s.m.authFailures.WithLabelValues(reason)); got < min {
			t.Errorf("auth failures %s = %v", reason, got)
		}
	}
}

// TestAuthRateLimit mounts issue 10's item 8a: a client with a wrong
// password and a good client behind one address (two ports of 127.0.0.1).
// Once the bad one reaches the limit, its requests for that user name are
// dropped unanswered, and the good one, another user, still allocates (on
// the old per-address limit it was dropped too). Failures over many names
// still reach the per-source ceiling, beyond which everything is dropped.
func TestAuthRateLimit(t *testing.T) {
	verifyNoLeaks(t)
	s, _ := newTestServer(t, func(c *Config) {
		c.AuthFailuresPerMinute = 3
		c.AuthFailuresPerSource = 6
		c.Users["carol"] = "pw"
	})
	bad := newSTUNClient(t, s.Addr(), testUser, "wrong")
	for i := 0; i < 3; i++ {
		if code := errCode(bad.do(stun.MethodAllocate, requestedUDP())); code != 401 {
			t.Fatalf("failure %d: code %d", i, code)
		}
	}
	m := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestedUDP(),
		stun.NewUsername(testUser), stun.NewRealm(bad.realm), stun.NewNonce(bad.nonce),
		stun.NewLongTermIntegrity(testUser, bad.realm, "wrong"), stun.Fingerprint)
	if _, err := bad.roundTrip(m); err != errTimeout {
		t.Errorf("after the limit: %v, want no answer", err)
	}
	if got := testutil.ToFloat64(s.m.authFailures.WithLabelValues("rate_limited")); got != 1 {
		t.Errorf("rate_limited = %v", got)
	}
	// The good client behind the same address.
	good := newSTUNClient(t, s.Addr(), "carol", "pw")
	good.allocate()

	// Guessing other names from the address: three more failures reach
	// the source's ceiling of six; then even carol is dropped.
	for _, name := range []string{"x1", "x2", "x3"} {
		g := newSTUNClient(t, s.Addr(), name, "guess")
		if code := errCode(g.do(stun.MethodAllocate, requestedUDP())); code != 401 {
			t.Fatalf("guess %s: code %d", name, code)
		}
	}
	late := newSTUNClient(t, s.Addr(), "carol", "pw")
	late.realm, late.nonce = good.realm, good.nonce
	m = stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestedUDP(), stun.Fingerprint)
	if _, err := late.roundTrip(m); err != errTimeout {
		t.Errorf("over the source ceiling: %v, want no answer", err)
	}
	if got := testutil.ToFloat64(s.m.authFailures.WithLabelValues("rate_limited_source")); got != 1 {
		t.Errorf("rate_limited_source = %v", got)
	}
}

func TestQuotas(t *testing.T) {
	verifyNoLeaks(t)
	s, _ := newTestServer(t, func(c *Config) {
		c.Users["carol"] = "pw"
		c.Users["dave"] = "pw"
		c.MaxAllocationsPerUser = 1
		c.MaxAllocations = 2
	})
	newSTUNClient(t, s.Addr(), testUser, testPass).allocate()
	if code := errCode(newSTUNClient(t, s.Addr(), testUser, testPass).do(stun.MethodAllocate, requestedUDP())); code != 486 {
		t.Errorf("second allocation of one user: code %d, want 486", code)
	}
	newSTUNClient(t, s.Addr(), "carol", "pw").allocate()
	if code := errCode(newSTUNClient(t, s.Addr(), "dave", "pw").do(stun.MethodAllocate, requestedUDP())); code != 486 {
		t.Errorf("third allocation in total: code %d, want 486", code)
	}
	if got := testutil.ToFloat64(s.m.quotaHits.WithLabelValues("user")); got != 1 {
		t.Errorf("user quota hits = %v", got)
	}
	if got := testutil.ToFloat64(s.m.quotaHits.WithLabelValues("total")); got != 1 {
		t.Errorf("total quota hits = %v", got)
	}
	// The port range is a quota too: 508 when it is used up.
	s2, _ := newTestServer(t, func(c *Config) { c.RelayPortLow, c.RelayPortHigh, c.NoSharing = 41000, 41001, true })
	for i := 0; i < 2; i++ {
		newSTUNClient(t, s2.Addr(), testUser, testPass).allocate()
	}
	if code := errCode(newSTUNClient(t, s2.Addr(), testUser, testPass).do(stun.MethodAllocate, requestedUDP())); code != 508 {
		t.Errorf("port range exhausted: code %d, want 508", code)
	}
}

func TestAllocationMismatchAndRetransmit(t *testing.T) {
	verifyNoLeaks(t)
	s, _ := newTestServer(t, nil)
	c := newSTUNClient(t, s.Addr(), testUser, testPass)
	c.allocate()
	if code := errCode(c.do(stun.MethodAllocate, requestedUDP())); code != 437 {
		t.Errorf("second Allocate on one 5-tuple: code %d, want 437", code)
	}
	other := newSTUNClient(t, s.Addr(), testUser, testPass)
	if code := errCode(other.do(stun.MethodRefresh)); code != 437 {
		t.Errorf("Refresh without allocation: code %d, want 437", code)
	}
	if code := errCode(c.do(stun.MethodAllocate, rawAttr{stun.AttrRequestedTransport, []byte{6, 0, 0, 0}})); code != 437 {
		t.Errorf("TCP transport on allocated tuple: code %d", code)
	}
	// A TCP relay is for TCP and TLS clients only (RFC 6062 section 5.1).
	if code := errCode(other.do(stun.MethodAllocate, rawAttr{stun.AttrRequestedTransport, []byte{6, 0, 0, 0}})); code != 400 {
		t.Errorf("TCP relay transport over UDP: code %d, want 400", code)
	}
	if code := errCode(other.do(stun.MethodAllocate, rawAttr{stun.AttrRequestedTransport, []byte{132, 0, 0, 0}})); code != 442 {
		t.Errorf("SCTP relay transport: code %d, want 442", code)
	}
	// Refresh to 0 deletes.
	if code := errCode(c.do(stun.MethodRefresh, lifetimeSetter(0))); code != 0 {
		t.Errorf("delete: code %d", code)
	}
	if n := s.Allocations(); n != 0 {
		t.Errorf("allocations after delete = %d", n)
	}
}

// TestAllocationsExpire: expired allocations free their sockets, and Close
// leaves no goroutine behind (verifyNoLeaks).
func TestAllocationsExpire(t *testing.T) {
	verifyNoLeaks(t)
	before := countFDs(t)
	s, _ := newTestServer(t, func(c *Config) {
		c.DefaultLifetime = 300 * time.Millisecond
		c.MaxLifetime = 300 * time.Millisecond
	})
	const n = 20
	clients := make([]*stunClient, n)
	for i := range clients {
		clients[i] = newSTUNClient(t, s.Addr(), testUser, testPass)
		clients[i].allocate()
	}
	if got := s.Allocations(); got != n {
		t.Fatalf("allocations = %d", got)
	}
	// The sweeper ticks every second; wait for it with a deadline.
	testkit.WaitFor(t, 5*time.Second, "allocations expired", func() bool { return s.Allocations() == 0 })
	if got := testutil.ToFloat64(s.m.allocations); got != 0 {
		t.Errorf("allocations gauge = %v", got)
	}
	s.Close()
	for _, c := range clients {
		c.c.Close()
	}
	if after := countFDs(t); after > before {
		t.Errorf("file descriptors: %d before, %d after", before, after)
	}
}

func countFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

func TestBucket(t *testing.T) {
	const rate = 1000 // bytes per second
	sec := int64(time.Second)
	var b bucket
	for _, step := range []struct {
		at   int64
		n    int
		want bool
	}{
		{10 * sec, 600, true},        // starts full (one second's worth)
		{10 * sec, 400, true},        // exactly empty now
		{10 * sec, 1, false},         // nothing left
		{10*sec + sec/2, 400, true},  // half a second refills 500
		{10*sec + sec/2, 200, false}, // 100 left
		{20 * sec, 1000, true},       // a long pause refills to the cap, no more
		{20 * sec, 1, false},
	} {
		if got := b.take(step.n, step.at, rate); got != step.want {
			t.Fatalf("take(%d) at %d: %v, want %v", step.n, step.at, got, step.want)
		}
	}
	if !b.take(1<<20, 0, 0) {
		t.Fatal("rate 0 must be unlimited")
	}
}

// TestBandwidthLimit: an allocation over its byte rate has packets dropped
// and counted.
func TestBandwidthLimit(t *testing.T) {
	s, _ := newTestServer(t, func(c *Config) { c.AllowLoopbackPeers = true; c.BandwidthPerAllocation = 1000 })
	key, _ := boundChannel(t, s, sinkPeer(t))
	frame := channelFrame(200)
	var st relayStats
	for i := 0; i < 10; i++ {
		s.relayChannelData(key, frame, &st)
	}
	if st.packets != 5 || st.bw != 5 {
		t.Fatalf("relayed %d, dropped %d; want 5 and 5 (1000 B/s, 200 B packets)", st.packets, st.bw)
	}
	st.flush(s.m)
	if got := testutil.ToFloat64(s.m.dropBandwidth); got != 5 {
		t.Errorf("bandwidth drops = %v", got)
	}
}

// TestRequestChecks: unknown comprehension-required attributes get 420,
// a bad FINGERPRINT is discarded, EVEN-PORT gets an even port.
func TestRequestChecks(t *testing.T) {
	s, _ := newTestServer(t, nil)
	c := newSTUNClient(t, s.Addr(), testUser, testPass)
	resp := c.do(stun.MethodAllocate, requestedUDP(), rawAttr{0x7777, []byte{1, 2, 3, 4}})
	if code := errCode(resp); code != 420 {
		t.Fatalf("unknown attribute: code %d, want 420", code)
	}
	var ua stun.UnknownAttributes
	if err := ua.GetFrom(resp); err != nil || len(ua) != 1 || ua[0] != 0x7777 {
		t.Errorf("UNKNOWN-ATTRIBUTES %v, %v", ua, err)
	}
	m := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	m.Raw[len(m.Raw)-1] ^= 0xff
	if _, err := c.roundTrip(m); err != errTimeout {
		t.Errorf("bad fingerprint: %v, want no answer", err)
	}
	for i := 0; i < 5; i++ {
		e := newSTUNClient(t, s.Addr(), testUser, testPass)
		resp := e.do(stun.MethodAllocate, requestedUDP(), rawAttr{stun.AttrEvenPort, []byte{0}})
		var x stun.XORMappedAddress
		if err := x.GetFromAs(resp, stun.AttrXORRelayedAddress); err != nil || x.Port%2 != 0 {
			t.Fatalf("EVEN-PORT: relayed port %d, %v", x.Port, err)
		}
	}
}

// TestEmbeddedIPv4Peers mounts issue 10's item 8d on an IPv6 relay: peers
// that embed a refused IPv4 address (IPv4-compatible ::7f00:1 and
// ::a9fe:a9fe, IPv4-translated, NAT64, 6to4) get 403 on CreatePermission,
// ChannelBind and Send; before, the IPv4-compatible and IPv4-translated
// forms passed the filter.
func TestEmbeddedIPv4Peers(t *testing.T) {
	verifyNoLeaks(t)
	probe, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skip("no IPv6 loopback")
	}
	probe.Close()
	s, _ := newTestServer(t, func(c *Config) { c.Listen = netip.MustParseAddrPort("[::1]:0") })
	c := newSTUNClient6(t, s.Addr())
	c.allocate()
	for i, p := range []string{"[::7f00:1]:9", "[::a9fe:a9fe]:80", "[::a00:1]:9", "[::ffff:0:7f00:1]:9", "[64:ff9b::7f00:1]:9", "[2002:a00:1::1]:9"} {
		ap := netip.MustParseAddrPort(p)
		if code := errCode(c.do(stun.MethodCreatePermission, peerAttr(ap))); code != 403 {
			t.Errorf("CreatePermission %s: code %d, want 403", p, code)
		}
		if code := errCode(c.do(stun.MethodChannelBind, channelAttr(0x4000+uint16(i)), peerAttr(ap))); code != 403 {
			t.Errorf("ChannelBind %s: code %d, want 403", p, code)
		}
	}
	if code := errCode(c.do(stun.MethodCreatePermission, peerAttr(netip.MustParseAddrPort("[::808:808]:53")))); code != 0 {
		t.Errorf("CreatePermission ::8.8.8.8: code %d, want success", code)
	}
}
