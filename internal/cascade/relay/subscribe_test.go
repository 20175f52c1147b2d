package relay_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/client/relayclient"
	"github.com/traverse-rtc/traverse/internal/cascade/relay"
	"github.com/traverse-rtc/traverse/internal/cascade/relayauth"
	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// subSFU is clientSFU that also serves receiving clients: it records
// subscriptions, hellos that refreshed them, and feedback.
type subSFU struct {
	clientSFU
	smu      sync.Mutex
	subs     map[relay.ClientID]string
	refresh  int
	feedback []string
}

func (s *subSFU) ClientSubscribe(id relay.ClientID, g relay.ClientGrant) {
	s.smu.Lock()
	defer s.smu.Unlock()
	if s.subs == nil {
		s.subs = map[relay.ClientID]string{}
	}
	s.subs[id] = g.Room + "/" + g.Identity
	s.refresh++
}

func (s *subSFU) ClientUnsubscribe(id relay.ClientID, _ relay.ClientGrant) {
	s.smu.Lock()
	defer s.smu.Unlock()
	delete(s.subs, id)
}

func (s *subSFU) ClientFeedback(_ relay.ClientID, track, layer uint8, rtcp []byte) {
	s.smu.Lock()
	defer s.smu.Unlock()
	s.feedback = append(s.feedback, fmt.Sprintf("%d/%d/%x", track, layer, rtcp))
}

// subscribed returns the one subscribed client (0 when not one).
func (s *subSFU) subscribed() (relay.ClientID, int) {
	s.smu.Lock()
	defer s.smu.Unlock()
	var id relay.ClientID
	for k := range s.subs {
		id = k
	}
	return id, len(s.subs)
}

func startSubNode(t testing.TB, mod func(*relay.Config)) (*clientNode, *subSFU) {
	sfu := &subSFU{}
	var n *clientNode
	n = startClientNode(t, func(c *relay.Config) {
		c.Local = sfu
		if mod != nil {
			mod(c)
		}
	})
	return n, sfu
}

func mintRights(t testing.TB, room, id string, pub, sub bool) (string, []byte) {
	t.Helper()
	tok, sec, err := relayauth.Mint(tokenKey, signal.Claims{Room: room, Identity: id, Publish: pub, Subscribe: sub,
		Expires: time.Now().Add(time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	return tok, sec
}

func subHello(t *testing.T, l *relaywire.ClientLink, tok, room string) []byte {
	t.Helper()
	body, err := relaywire.AppendHello(nil, &relaywire.Hello{Room: room, Subscribe: true})
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.SealHello(nil, tok, body)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestRelayClientReceives: a subscribing client is served by the SFU; what
// the node sends it (a track, its media, a track gone) arrives in order at
// the client's callbacks; its keyframe request reaches the SFU.
func TestRelayClientReceives(t *testing.T) {
	n, sfu := startSubNode(t, nil)
	tok, sec := mintRights(t, "standup", "viewer", false, true)
	type ev struct {
		kind string
		idx  uint8
		data string
	}
	evs := make(chan ev, 16)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := relayclient.Dial(ctx, relayclient.Config{Server: n.e.Addr(), Token: tok, Secret: sec, Room: "standup",
		Local: netip.MustParseAddrPort("127.0.0.1:0"), Subscribe: true,
		OnTrack: func(tr relayclient.RecvTrack) {
			evs <- ev{"track", tr.Index, tr.Publisher + "/" + tr.ID + "/" + tr.MimeType}
		},
		OnRTP:       func(track, layer uint8, rtp []byte) { evs <- ev{"rtp", track, string(rtp)} },
		OnTrackGone: func(idx uint8) { evs <- ev{"gone", idx, ""} }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	testkit.WaitFor(t, 5*time.Second, "the client subscribed", func() bool { _, k := sfu.subscribed(); return k == 1 })
	id, _ := sfu.subscribed()
	next := func() ev {
		t.Helper()
		select {
		case e := <-evs:
			return e
		case <-time.After(5 * time.Second):
			t.Fatal("nothing arrived at the client")
		}
		return ev{}
	}
	st := &relaywire.SubTrack{Publisher: "alice", ClientTrack: relaywire.ClientTrack{ID: "cam", Kind: relaywire.KindVideo, Layers: 1,
		ClockRate: 90000, Mime: "video/VP8"}}
	if err := n.e.SendClientTrack(id, 200, st); err != nil {
		t.Fatal(err)
	}
	if e := next(); e != (ev{"track", 200, "alice/cam/video/VP8"}) {
		t.Fatalf("%+v", e)
	}
	if err := n.e.SendClientMedia(id, 200, 0, []byte("rtp-1")); err != nil {
		t.Fatal(err)
	}
	if e := next(); e != (ev{"rtp", 200, "rtp-1"}) {
		t.Fatalf("%+v", e)
	}
	if err := c.RequestKeyframe(200, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "the keyframe request at the SFU", func() bool {
		sfu.smu.Lock()
		defer sfu.smu.Unlock()
		return len(sfu.feedback) == 1 && sfu.feedback[0] == "200/1/81ce00020000000000000000"
	})
	if err := n.e.SendClientTrack(id, 200, nil); err != nil {
		t.Fatal(err)
	}
	if e := next(); e != (ev{"gone", 200, ""}) {
		t.Fatalf("%+v", e)
	}
	if got := c.Received(); len(got) != 0 {
		t.Fatalf("tracks after gone: %+v", got)
	}
	// media of a track the client was not told of is not handed on
	if err := n.e.SendClientMedia(id, 7, 0, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := n.e.SendClientTrack(id, 8, st); err != nil {
		t.Fatal(err)
	}
	if e := next(); e.kind != "track" || e.idx != 8 {
		t.Fatalf("%+v after media of an unknown track", e)
	}
}

// refused dials a receiving client into room standup that the node must
// not welcome.
func refused(t *testing.T, n *clientNode, tok string, sec []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	_, err := relayclient.Dial(ctx, relayclient.Config{Server: n.e.Addr(), Token: tok, Secret: sec, Room: "standup",
		Local: netip.MustParseAddrPort("127.0.0.1:0"), Subscribe: true})
	if !errors.Is(err, relayclient.ErrRefused) {
		t.Fatalf("welcomed: %v", err)
	}
}

// TestRelayClientSubscribeAttacks mounts each attack on a node's
// receiving clients and checks it is dropped and counted, while the
// genuine receiving client is served.
func TestRelayClientSubscribeAttacks(t *testing.T) {
	n, sfu := startSubNode(t, func(c *relay.Config) { c.HelloRate = relay.DefaultHelloRate })
	send := func(c *net.UDPConn, f []byte) {
		t.Helper()
		if _, err := c.WriteToUDPAddrPort(f, n.e.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	noSub := func() {
		t.Helper()
		if _, k := sfu.subscribed(); k != 0 {
			t.Fatalf("%d clients subscribed", k)
		}
	}
	t.Run("subscribing without the right", func(t *testing.T) {
		tok, sec := mintRights(t, "standup", "pub-only", true, false)
		refused(t, n, tok, sec)
		n.wantDrop(t, "client_rights", 1)
		noSub()
	})
	t.Run("token for another room", func(t *testing.T) {
		tok, sec := mintRights(t, "other", "viewer-2", false, true)
		refused(t, n, tok, sec)
		n.wantDrop(t, "client_room", 1)
		noSub()
	})

	// the genuine receiving client, its hello captured
	tok, sec := mintRights(t, "standup", "viewer", false, true)
	good := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	att := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	l, _ := relaywire.NewClientLink(sec, false, 0)
	hello := subHello(t, l, tok, "standup")
	send(good, bytes.Clone(hello))
	testkit.WaitFor(t, 5*time.Second, "the genuine client subscribed", func() bool { _, k := sfu.subscribed(); return k == 1 })
	id, _ := sfu.subscribed()
	recv := func(c *net.UDPConn, wait time.Duration) ([]byte, error) {
		b := make([]byte, 2048)
		_ = c.SetReadDeadline(time.Now().Add(wait))
		k, _, err := c.ReadFromUDPAddrPort(b)
		return b[:k], err
	}
	// the welcome
	if _, err := recv(good, 5*time.Second); err != nil {
		t.Fatal(err)
	}

	t.Run("receiving redirected to another address", func(t *testing.T) {
		// the captured hello replayed from the attacker's address: a
		// replay, the session stays where it was
		send(att, bytes.Clone(hello))
		n.wantDrop(t, "replay", 1)
		// a feedback frame sealed by the genuine client, replayed from
		// there: no session at that address
		fb := l.Seal(nil, relaywire.TypeClient, relaywire.AppendClientMsg(nil, relaywire.ClientMsg{Kind: relaywire.KindFeedback}, []byte("pli")))
		send(att, fb)
		n.wantDrop(t, "client_unknown", 1)
		if err := n.e.SendClientMedia(id, 0, 0, []byte("media")); err != nil {
			t.Fatal(err)
		}
		f, err := recv(good, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		nl, _ := relaywire.NewClientLink(sec, false, 0)
		if _, body, err := nl.Open(f); err != nil || !bytes.HasSuffix(body, []byte("media")) {
			t.Fatalf("the genuine client got %x: %v", body, err)
		}
		// the node sent the attacker nothing: no welcome, no media (the
		// media went out before this read began)
		if b, err := recv(att, 300*time.Millisecond); err == nil {
			t.Fatalf("the attacker received %x", b)
		}
	})
	t.Run("media only to receiving clients", func(t *testing.T) {
		ptok, psec := mintRights(t, "standup", "ingest", true, true)
		c, err := dial(t, n, ptok, psec, "standup", 5*time.Second) // publishes, does not subscribe
		if err != nil {
			t.Fatal(err)
		}
		var pid relay.ClientID
		n.sfu.mu.Lock()
		for k := range n.sfu.joined {
			pid = k
		}
		n.sfu.mu.Unlock()
		if err := n.e.SendClientMedia(pid, 0, 0, []byte("x")); !errors.Is(err, relay.ErrNoRoute) {
			t.Fatalf("media to a client that does not receive: %v", err)
		}
		if err := c.RequestKeyframe(0, 0); err == nil {
			t.Fatal("a keyframe request without subscribing was sent")
		}
		// a publishing client's feedback message (it receives nothing) is
		// refused at the node
		pc := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
		pl, _ := relaywire.NewClientLink(psec, false, 0)
		body, _ := relaywire.AppendHello(nil, &relaywire.Hello{Room: "standup", Publish: true,
			Tracks: []relaywire.ClientTrack{{ID: "cam", Kind: relaywire.KindVideo, Layers: 1, ClockRate: 90000, Mime: "video/VP8"}}})
		h, _ := pl.SealHello(nil, ptok, body)
		send(pc, h)
		if _, err := recv(pc, 5*time.Second); err != nil { // welcomed at its new address
			t.Fatal(err)
		}
		send(pc, pl.Seal(nil, relaywire.TypeClient, relaywire.AppendClientMsg(nil, relaywire.ClientMsg{Kind: relaywire.KindFeedback}, []byte("pli"))))
		n.wantDrop(t, "client_rights", 2)
	})
	t.Run("a flood of subscribes", func(t *testing.T) {
		// one source, 2,000 valid subscribe hellos at once: past the
		// per-source hello rate (5 a second, burst 5) they are dropped
		// before their token is checked; many clients at once are
		// TestRelayClientSubscribeLimit's
		fl, _ := relaywire.NewClientLink(sec, false, 0)
		before := n.drops(t, "client_rate")
		sfu.smu.Lock()
		refreshed := sfu.refresh
		sfu.smu.Unlock()
		flood := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
		start := time.Now()
		for range 2000 {
			send(flood, subHello(t, fl, tok, "standup"))
		}
		n.wantDrop(t, "client_rate", before+1500)
		allowed := 5 + 5*time.Since(start).Seconds() + 1
		sfu.smu.Lock()
		served := sfu.refresh - refreshed
		sfu.smu.Unlock()
		if float64(served) > allowed {
			t.Fatalf("the flood was served %d times, the rate allows %.0f", served, allowed)
		}
		if _, k := sfu.subscribed(); k != 1 {
			t.Fatalf("%d subscribed", k)
		}
	})
}

// TestRelayClientSubscribeLimit: subscribing clients count against
// MaxClients like publishing ones; one beyond is refused (client_limit)
// and never subscribed, and a client quiet for the idle time is
// unsubscribed.
func TestRelayClientSubscribeLimit(t *testing.T) {
	const max = 3
	n, sfu := startSubNode(t, func(c *relay.Config) { c.MaxClients, c.ClientIdle = max, 3*time.Second })
	var clients []*relayclient.Client
	for i := range max + 2 {
		tok, sec := mintRights(t, "standup", "viewer-"+string(rune('a'+i)), false, true)
		ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
		c, err := relayclient.Dial(ctx, relayclient.Config{Server: n.e.Addr(), Token: tok, Secret: sec, Room: "standup",
			Local: netip.MustParseAddrPort("127.0.0.1:0"), Subscribe: true})
		cancel()
		switch {
		case i < max && err != nil:
			t.Fatalf("client %d: %v", i, err)
		case i >= max && !errors.Is(err, relayclient.ErrRefused):
			t.Fatalf("client %d over MaxClients %d: %v", i, max, err)
		}
		if err == nil {
			clients = append(clients, c)
		}
	}
	n.wantDrop(t, "client_limit", 2)
	if _, k := sfu.subscribed(); k != max {
		t.Fatalf("%d subscribed, want %d", k, max)
	}
	for _, c := range clients {
		c.Close()
	}
	testkit.WaitFor(t, 10*time.Second, "quiet clients unsubscribed", func() bool { _, k := sfu.subscribed(); return k == 0 })
}

// BenchmarkSendClientMedia is the cost of one 1,200-byte RTP packet to a
// receiving relay client: the session lookup, AES-128-GCM and one sendto
// on loopback (the client's socket is not read: the kernel drops what
// overflows it).
func BenchmarkSendClientMedia(b *testing.B) {
	n, sfu := startSubNode(b, nil)
	tok, sec := mintRights(b, "standup", "viewer", false, true)
	c := testkit.ListenUDP(b, netip.MustParseAddrPort("127.0.0.1:0"))
	l, _ := relaywire.NewClientLink(sec, false, 0)
	body, _ := relaywire.AppendHello(nil, &relaywire.Hello{Room: "standup", Subscribe: true})
	f, _ := l.SealHello(nil, tok, body)
	if _, err := c.WriteToUDPAddrPort(f, n.e.Addr()); err != nil {
		b.Fatal(err)
	}
	testkit.WaitFor(b, 5*time.Second, "the client subscribed", func() bool { _, k := sfu.subscribed(); return k == 1 })
	id, _ := sfu.subscribed()
	rtp := make([]byte, 1200)
	b.ReportAllocs()
	b.SetBytes(int64(len(rtp)))
	for b.Loop() {
		if err := n.e.SendClientMedia(id, 0, 0, rtp); err != nil {
			b.Fatal(err)
		}
	}
}
