package relay_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/client/relayclient"
	"github.com/traverse-rtc/traverse/internal/cascade/relay"
	"github.com/traverse-rtc/traverse/internal/cascade/relayauth"
	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/metricstest"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

var (
	tokenKey      = bytes.Repeat([]byte{0x33}, 32)
	clusterSecret = bytes.Repeat([]byte{0x5a}, 32)
)

// clientSFU is the test's Local with ClientLocal: it records what relay
// clients publish.
type clientSFU struct {
	media  atomic.Int64
	mu     sync.Mutex
	last   string
	joined map[relay.ClientID]string
	left   int
}

func (s *clientSFU) DeliverMedia(room, publisher, track []byte, layer uint8, rtp []byte) {
	s.media.Add(1)
	s.mu.Lock()
	s.last = string(room) + "/" + string(publisher) + "/" + string(track) + "/" + string(rtp)
	s.mu.Unlock()
}
func (s *clientSFU) DeliverFeedback([]byte, []byte, []byte, uint8, relay.NodeID, []byte) {}
func (s *clientSFU) Need(relay.StreamKey, bool)                                          {}
func (s *clientSFU) ClientJoin(id relay.ClientID, g relay.ClientGrant, tracks []relaywire.ClientTrack) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.joined == nil {
		s.joined = map[relay.ClientID]string{}
	}
	s.joined[id] = g.Room + "/" + g.Identity + "/" + tracks[0].ID
	return nil
}
func (s *clientSFU) ClientLeave(id relay.ClientID, _ relay.ClientGrant, _ []relaywire.ClientTrack) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.joined, id)
	s.left++
}
func (s *clientSFU) lastMedia() string { s.mu.Lock(); defer s.mu.Unlock(); return s.last }
func (s *clientSFU) joinedN() int      { s.mu.Lock(); defer s.mu.Unlock(); return len(s.joined) }

type clientNode struct {
	e   *relay.Endpoint
	sfu *clientSFU
	reg *prometheus.Registry
}

func (n *clientNode) drops(t testing.TB, reason string) float64 {
	return metricstest.Value(t, n.reg, "traverse_relay_dropped_total", "reason", reason)
}

func (n *clientNode) wantDrop(t testing.TB, reason string, at float64) {
	t.Helper()
	testkit.WaitFor(t, 5*time.Second, "drop "+reason, func() bool { return n.drops(t, reason) >= at })
}

func startClientNode(t testing.TB, mod func(*relay.Config)) *clientNode {
	n := &clientNode{sfu: &clientSFU{}, reg: prometheus.NewRegistry()}
	cfg := relay.Config{Node: 2, Listen: netip.MustParseAddrPort("127.0.0.1:0"), Secret: clusterSecret, Local: n.sfu,
		Registry: n.reg, ClientAuth: relayauth.Verifier(tokenKey), HelloRate: 1000}
	if mod != nil {
		mod(&cfg)
	}
	e, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n.e = e
	testkit.Run(t, e.Run)
	return n
}

func mint(t testing.TB, room, id string, publish bool, ttl time.Duration) (string, []byte) {
	now := time.Now()
	tok, sec, err := relayauth.Mint(tokenKey, signal.Claims{Room: room, Identity: id, Publish: publish, Subscribe: true,
		IssuedAt: now.Unix(), Expires: now.Add(ttl).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	return tok, sec
}

var camTrack = []relayclient.Track{{ID: "cam", Video: true, MimeType: "video/VP8", ClockRate: 90000}}

func dial(t testing.TB, n *clientNode, tok string, sec []byte, room string, wait time.Duration) (*relayclient.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := relayclient.Dial(ctx, relayclient.Config{Server: n.e.Addr(), Token: tok, Secret: sec, Room: room, Tracks: camTrack,
		Local: netip.MustParseAddrPort("127.0.0.1:0")})
	if err == nil {
		t.Cleanup(c.Close)
	}
	return c, err
}

// TestRelayClientPublishes: a client with a valid token is welcomed, its
// track joins the room, its packets reach the SFU under the token's room
// and identity, and the node's keyframe requests reach it back.
func TestRelayClientPublishes(t *testing.T) {
	n := startClientNode(t, nil)
	tok, sec := mint(t, "standup", "ingest-1", true, time.Hour)
	fb := make(chan []byte, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := relayclient.Dial(ctx, relayclient.Config{Server: n.e.Addr(), Token: tok, Secret: sec, Room: "standup", Tracks: camTrack,
		Local: netip.MustParseAddrPort("127.0.0.1:0"), OnFeedback: func(track, layer uint8, rtcp []byte) {
			select {
			case fb <- append([]byte(nil), rtcp...):
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n.sfu.joinedN() != 1 || n.e.Clients() != 1 {
		t.Fatalf("joined %d, clients %d", n.sfu.joinedN(), n.e.Clients())
	}
	if err := c.WriteRTP(0, 0, []byte("rtp-1")); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "media", func() bool { return n.sfu.lastMedia() == "standup/ingest-1/cam/rtp-1" })
	if err := c.WriteRTP(1, 0, []byte("x")); err == nil {
		t.Fatal("a track the client did not declare was written")
	}
	var id relay.ClientID
	n.sfu.mu.Lock()
	for k := range n.sfu.joined {
		id = k
	}
	n.sfu.mu.Unlock()
	if err := n.e.SendClientFeedback(id, 0, 0, []byte("pli")); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-fb:
		if string(b) != "pli" {
			t.Fatalf("feedback %q", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no feedback at the client")
	}
}

// TestRelayClientAttacks mounts each attack on a node's relay port and
// checks it is dropped and counted, while the genuine client keeps
// publishing.
func TestRelayClientAttacks(t *testing.T) {
	n := startClientNode(t, nil)
	// a configured peer node, at an address the attacker does not hold
	peerConn := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	if err := n.e.SetPeers(map[relay.NodeID]netip.AddrPort{1: peerConn.LocalAddr().(*net.UDPAddr).AddrPort()}); err != nil {
		t.Fatal(err)
	}
	tok, sec := mint(t, "standup", "ingest-1", true, time.Hour)
	att := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	send := func(c *net.UDPConn, f []byte) {
		t.Helper()
		if _, err := c.WriteToUDPAddrPort(f, n.e.Addr()); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("no token", func(t *testing.T) {
		f := relaywire.AppendLinkHeader(nil, relaywire.LinkHeader{Type: relaywire.TypeHello, Counter: 1})
		f = append(f, 0, 0)
		f = append(f, make([]byte, 32)...)
		send(att, f)
		n.wantDrop(t, "client_token", 1)
		// a token that is not one
		l, _ := relaywire.NewClientLink(sec, false, 0)
		f, _ = l.SealHello(nil, "not-a-token", []byte{1, 'r', 1, 0})
		send(att, f)
		n.wantDrop(t, "client_token", 2)
	})
	// hellos the node refuses: each counted under its reason (the counts
	// are cumulative: "no token" above counted two client_token drops)
	old, osec := mint(t, "standup", "ingest-2", true, -time.Hour)
	other, rsec := mint(t, "other", "ingest-3", true, time.Hour)
	sub, ssec := mint(t, "standup", "viewer", false, time.Hour)
	for _, c := range []struct {
		name   string
		tok    string
		sec    []byte
		reason string
		count  float64
	}{
		{"expired token", old, osec, "client_token", 3},
		{"token for another room", other, rsec, "client_room", 1},
		{"token without its secret", tok, bytes.Repeat([]byte{1}, 32), "auth", 1},
		{"publish without the right", sub, ssec, "client_rights", 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := dial(t, n, c.tok, c.sec, "standup", 600*time.Millisecond); !errors.Is(err, relayclient.ErrRefused) {
				t.Fatalf("%s: %v", c.name, err)
			}
			n.wantDrop(t, c.reason, c.count)
		})
	}

	// the genuine client: its hello and a media frame, captured
	good := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	l, _ := relaywire.NewClientLink(sec, false, 0)
	body, _ := relaywire.AppendHello(nil, &relaywire.Hello{Room: "standup", Publish: true,
		Tracks: []relaywire.ClientTrack{{ID: "cam", Kind: relaywire.KindVideo, Layers: 1, ClockRate: 90000, Mime: "video/VP8"}}})
	hello, _ := l.SealHello(nil, tok, body)
	send(good, bytes.Clone(hello))
	testkit.WaitFor(t, 5*time.Second, "the genuine client bound", func() bool { return n.e.Clients() == 1 })
	media := l.Seal(nil, relaywire.TypeClient, relaywire.AppendClientMsg(nil, relaywire.ClientMsg{Kind: relaywire.KindMedia}, []byte("m1")))
	send(good, bytes.Clone(media))
	testkit.WaitFor(t, 5*time.Second, "genuine media", func() bool { return n.sfu.media.Load() == 1 })

	t.Run("hello replayed from another address", func(t *testing.T) {
		send(att, bytes.Clone(hello))
		n.wantDrop(t, "replay", 1)
		send(att, bytes.Clone(media)) // and its media: no session there
		n.wantDrop(t, "client_unknown", 1)
		send(good, bytes.Clone(media)) // and from its own address: a replay
		n.wantDrop(t, "replay", 2)
	})
	t.Run("client sending as a node", func(t *testing.T) {
		forged, _ := relaywire.NewLink(bytes.Repeat([]byte{9}, 32), 1, 2, 0)
		h := &relaywire.Header{Kind: relaywire.KindMedia, HopLimit: 8, Source: 1, NDst: 1, Dst: [relaywire.MaxDst]relaywire.NodeID{2},
			Room: []byte("standup"), Publisher: []byte("x"), Track: []byte("y")}
		msg, _ := relaywire.AppendHeader(nil, h)
		send(good, forged.Seal(nil, relaywire.TypeData, relaywire.AppendData(nil, 1, msg)))
		n.wantDrop(t, "address", 1) // node 1 speaks from its own address
		other, _ := relaywire.NewLink(bytes.Repeat([]byte{9}, 32), 7, 2, 0)
		send(good, other.Seal(nil, relaywire.TypeData, relaywire.AppendData(nil, 1, msg)))
		n.wantDrop(t, "unknown_peer", 1)
		// a welcome is the node's to send
		send(good, l.Seal(nil, relaywire.TypeWelcome, relaywire.AppendWelcome(nil, 0, 1)))
		n.wantDrop(t, "malformed", 1)
	})
	// the genuine client still publishes, and nothing else got in
	send(good, l.Seal(nil, relaywire.TypeClient, relaywire.AppendClientMsg(nil, relaywire.ClientMsg{Kind: relaywire.KindMedia}, []byte("m2"))))
	testkit.WaitFor(t, 5*time.Second, "genuine media after the attacks", func() bool { return n.sfu.lastMedia() == "standup/ingest-1/cam/m2" })
	if got := n.sfu.media.Load(); got != 2 {
		t.Fatalf("%d packets delivered, want the genuine 2", got)
	}
	if n.e.Clients() != 1 || n.sfu.joinedN() != 1 {
		t.Fatalf("clients %d, joined %d", n.e.Clients(), n.sfu.joinedN())
	}
}

// TestRelayClientLimits: MaxClients, the per-source rate and the idle
// timeout.
func TestRelayClientLimits(t *testing.T) {
	n := startClientNode(t, func(c *relay.Config) {
		c.MaxClients, c.ClientRate, c.ClientIdle = 1, 200, 200*time.Millisecond
	})
	tok, sec := mint(t, "standup", "a", true, time.Hour)
	c, err := dial(t, n, tok, sec, "standup", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tok2, sec2 := mint(t, "standup", "b", true, time.Hour)
	if _, err := dial(t, n, tok2, sec2, "standup", 600*time.Millisecond); !errors.Is(err, relayclient.ErrRefused) {
		t.Fatalf("second client over MaxClients 1: %v", err)
	}
	n.wantDrop(t, "client_limit", 1)
	for i := range 1000 {
		if err := c.WriteRTP(0, 0, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	n.wantDrop(t, "client_rate", 1)
	if got := n.sfu.media.Load(); got >= 1000 || got == 0 {
		t.Fatalf("%d of 1000 packets over 200/s delivered", got)
	}
	// quiet for longer than ClientIdle: unbound, tracks gone
	testkit.WaitFor(t, 5*time.Second, "idle client unbound", func() bool { return n.e.Clients() == 0 && n.sfu.joinedN() == 0 })
}
