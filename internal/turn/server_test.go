package turn

import (
	"github.com/traverse-rtc/traverse/internal/testkit"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/traverse-rtc/traverse/internal/turn/turntest"
)

const (
	testRealm = "traverse.test"
	testUser  = "alice"
	testPass  = "wonderland"
)

func newTestServer(t testing.TB, mut func(*Config)) (*Server, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := Config{
		Listen:     netip.MustParseAddrPort("127.0.0.1:0"),
		Realm:      testRealm,
		Users:      map[string]string{testUser: testPass},
		Registerer: reg,
	}
	if mut != nil {
		mut(&cfg)
	}
	return runServer(t, cfg), reg
}

// runServer is New and Run until the test ends (or the test's Close).
func runServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, s.Run)
	return s
}

func pionClient(t testing.TB, server netip.AddrPort, user, pass string) *turn.Client {
	t.Helper()
	return turntest.Client(t, server.String(), user, pass, testRealm, nil)
}

func TestPionClientRelay(t *testing.T) {
	verifyNoLeaks(t)
	s, reg := newTestServer(t, func(c *Config) { c.AllowLoopbackPeers = true })
	peer := turntest.UDPEcho(t)
	c := pionClient(t, s.Addr(), testUser, testPass)

	mapped, err := c.SendBindingRequest()
	if err != nil {
		t.Fatalf("binding: %v", err)
	}
	if mapped.(*net.UDPAddr).Port == 0 {
		t.Fatalf("binding: no mapped address: %v", mapped)
	}
	relay, err := c.Allocate()
	if err != nil {
		t.Fatalf("allocate: %v", err)
	}
	defer relay.Close()
	// pion sends the first packets as Send indications while it binds a
	// channel, then ChannelData: echo enough to go through both.
	buf := make([]byte, 1500)
	for i := 0; i < 50; i++ {
		msg := []byte{byte(i), 1, 2, 3, 4, 5, 6, 7}
		if _, err := relay.WriteTo(msg, peer.LocalAddr()); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		_ = relay.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, from, err := relay.ReadFrom(buf)
		if err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if from.String() != peer.LocalAddr().String() || n != len(msg) || buf[0] != byte(i) {
			t.Fatalf("echo %d: got %x from %v", i, buf[:n], from)
		}
		time.Sleep(5 * time.Millisecond) // let the channel bind land
	}
	if got := testutil.ToFloat64(s.m.allocations); got != 1 {
		t.Errorf("allocations gauge = %v", got)
	}
	if got := testutil.ToFloat64(s.m.toClientPackets); got < 50 {
		t.Errorf("to_client packets = %v", got)
	}
	if got := testutil.ToFloat64(s.m.channels); got != 1 {
		t.Errorf("channels gauge = %v, want 1 (pion binds a channel)", got)
	}
	if n, err := testutil.GatherAndCount(reg, "traverse_turn_relayed_packets_total"); err != nil || n != 2 {
		t.Errorf("gathered relayed packets series = %d, %v", n, err)
	}
	relay.Close()
	c.Close()
	s.Close()
	if got := testutil.ToFloat64(s.m.allocations); got != 0 {
		t.Errorf("allocations after close = %v", got)
	}
}

// verifyNoLeaks checks, after every other cleanup of t has run, that no
// goroutine started during the test is left.
func verifyNoLeaks(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// TestIPv6Relay: a server listening and relaying on [::1] relays
// ChannelData to an IPv6 peer and back; an IPv4 peer gets 443.
func TestIPv6Relay(t *testing.T) {
	verifyNoLeaks(t)
	probe, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skip("no IPv6 loopback")
	}
	probe.Close()
	s, _ := newTestServer(t, func(c *Config) {
		c.Listen = netip.MustParseAddrPort("[::1]:0")
		c.AllowLoopbackPeers = true
	})
	peer := testkit.ListenUDP(t, netip.MustParseAddrPort("[::1]:0"))
	testkit.Echo(t, peer, nil)
	c := newSTUNClient6(t, s.Addr())
	relayed := c.allocate()
	if !relayed.Addr().Is6() {
		t.Fatalf("relayed address %v is not IPv6", relayed)
	}
	pa := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	if code := errCode(c.do(stun.MethodChannelBind, channelAttr(0x4000), peerAttr(pa))); code != 0 {
		t.Fatalf("channel bind: %d", code)
	}
	buf := make([]byte, 1500)
	for i := 0; i < 10; i++ {
		msg := []byte{byte(i), 6}
		if _, err := c.c.WriteToUDPAddrPort(appendChannelData(nil, 0x4000, msg, false), s.Addr()); err != nil {
			t.Fatal(err)
		}
		_ = c.c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := c.c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("echo %d: %v", i, err)
		}
		if num, data, err := parseChannelData(buf[:n]); err != nil || num != 0x4000 || data[0] != byte(i) {
			t.Fatalf("echo %d: %x", i, buf[:n])
		}
	}
	sc := newSTUNClient6(t, s.Addr())
	sc.allocate()
	if code := errCode(sc.do(stun.MethodCreatePermission, peerAttr(netip.MustParseAddrPort("8.8.8.8:53")))); code != 443 {
		t.Errorf("IPv4 peer on an IPv6 relay: code %d, want 443", code)
	}
}

func newSTUNClient6(t testing.TB, server netip.AddrPort) *stunClient {
	t.Helper()
	c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &stunClient{t: t, c: c, server: server, user: testUser, pass: testPass}
}

// TestShards: with two event loops on one port (SO_REUSEPORT), clients
// spread over both and each relays through its own.
func TestShards(t *testing.T) {
	verifyNoLeaks(t)
	s, _ := newTestServer(t, func(c *Config) { c.AllowLoopbackPeers = true; c.Shards = 2 })
	peer := turntest.UDPEcho(t)
	buf := make([]byte, 1500)
	for i := 0; i < 6; i++ {
		c := pionClient(t, s.Addr(), testUser, testPass)
		relay, err := c.Allocate()
		if err != nil {
			t.Fatalf("client %d: allocate: %v", i, err)
		}
		for j := 0; j < 5; j++ {
			if _, err := relay.WriteTo([]byte{byte(i), byte(j)}, peer.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			_ = relay.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, _, err := relay.ReadFrom(buf)
			if err != nil || n != 2 || buf[0] != byte(i) || buf[1] != byte(j) {
				t.Fatalf("client %d echo %d: %x %v", i, j, buf[:n], err)
			}
		}
		relay.Close()
	}
	if len(s.engs) != 2 {
		t.Fatalf("engines = %d", len(s.engs))
	}
}
