package relay_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/client/relayclient"
	"github.com/traverse-rtc/traverse/internal/cascade/relay"
	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// layerSFU is subSFU that takes layer choices: it gives every subscribing
// client track 200 with 3 layers and records the choices it accepts.
type layerSFU struct {
	subSFU
	lmu     sync.Mutex
	choices []string
	e       atomic.Pointer[relay.Endpoint]
}

func (s *layerSFU) ClientSubscribe(id relay.ClientID, g relay.ClientGrant) {
	s.subSFU.ClientSubscribe(id, g)
	_ = s.e.Load().SendClientTrack(id, 200, &relaywire.SubTrack{Publisher: "alice", ClientTrack: relaywire.ClientTrack{ID: "cam",
		Kind: relaywire.KindVideo, Layers: 3, ClockRate: 90000, Mime: "video/VP8"}})
}

func (s *layerSFU) ClientLayer(_ relay.ClientID, track, layer uint8) error {
	if track != 200 || layer < relaywire.LayerNone && layer > 2 {
		return relay.ErrNoTrack
	}
	s.lmu.Lock()
	defer s.lmu.Unlock()
	s.choices = append(s.choices, fmt.Sprintf("%d/%d", track, layer))
	return nil
}

func (s *layerSFU) taken() []string {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	return append([]string(nil), s.choices...)
}

// TestRelayClientLayerChoice: a receiving client's layer choices reach the
// SFU; a choice without the subscribe right (client_rights), for a track
// the client was not given (client_track), malformed (a payload), or
// beyond the per-source layer rate (client_rate, a flood) is refused and
// counted, and the flood reaches the SFU at most at the layer rate.
func TestRelayClientLayerChoice(t *testing.T) {
	sfu := &layerSFU{}
	n := startClientNode(t, func(c *relay.Config) { c.Local = sfu })
	sfu.e.Store(n.e)
	tok, sec := mintRights(t, "standup", "viewer", false, true)
	got := make(chan relayclient.RecvTrack, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := relayclient.Dial(ctx, relayclient.Config{Server: n.e.Addr(), Token: tok, Secret: sec, Room: "standup",
		Local: netip.MustParseAddrPort("127.0.0.1:0"), Subscribe: true,
		OnTrack: func(tr relayclient.RecvTrack) { got <- tr }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	select {
	case tr := <-got:
		if tr.Index != 200 || tr.Layers != 3 {
			t.Fatalf("announced %+v", tr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no track announced")
	}
	for _, l := range []uint8{2, 0, relayclient.LayerNone, relayclient.LayerAll} {
		if err := c.SetLayer(200, l); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"200/2", "200/0", "200/254", "200/255"}
	testkit.WaitFor(t, 5*time.Second, "the choices at the SFU", func() bool { return len(sfu.taken()) == len(want) })
	if fmt.Sprint(sfu.taken()) != fmt.Sprint(want) {
		t.Fatalf("the SFU took %v, want %v", sfu.taken(), want)
	}
	// the client refuses what it can tell is wrong
	if err := c.SetLayer(200, 3); err == nil {
		t.Fatal("layer 3 of a 3-layer track sent")
	}
	if err := c.SetLayer(7, 0); err == nil {
		t.Fatal("a choice for a track not announced sent")
	}

	// raw frames from a client that says what it likes: the genuine
	// secret, its own bound address
	raw := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	rl, _ := relaywire.NewClientLink(sec, false, 0)
	send := func(f []byte) {
		t.Helper()
		if _, err := raw.WriteToUDPAddrPort(f, n.e.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	layerMsg := func(track, layer uint8, payload ...byte) []byte {
		return rl.Seal(nil, relaywire.TypeClient, append(relaywire.AppendLayerMsg(nil, track, layer), payload...))
	}
	t.Run("a track not given", func(t *testing.T) {
		send(subHello(t, rl, tok, "standup")) // rebinds the session here
		testkit.WaitFor(t, 5*time.Second, "the session bound to the raw socket", func() bool {
			sfu.smu.Lock()
			defer sfu.smu.Unlock()
			return sfu.refresh >= 2
		})
		send(layerMsg(9, 1))
		n.wantDrop(t, "client_track", 1)
		send(layerMsg(200, 3))
		n.wantDrop(t, "malformed", 1) // not a layer: the parser's
		send(layerMsg(200, 1, 0))
		n.wantDrop(t, "malformed", 2) // a payload
	})
	t.Run("without the subscribe right", func(t *testing.T) {
		ptok, psec := mintRights(t, "standup", "ingest", true, false)
		if _, err := dial(t, n, ptok, psec, "standup", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		pc := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
		pl, _ := relaywire.NewClientLink(psec, false, 0)
		body, _ := relaywire.AppendHello(nil, &relaywire.Hello{Room: "standup", Publish: true, Tracks: []relaywire.ClientTrack{
			{ID: "cam", Kind: relaywire.KindVideo, Layers: 1, ClockRate: 90000, Mime: "video/VP8"}}})
		h, _ := pl.SealHello(nil, ptok, body)
		before := n.drops(t, "client_rights")
		if _, err := pc.WriteToUDPAddrPort(h, n.e.Addr()); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 2048)
		_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := pc.ReadFromUDPAddrPort(b); err != nil { // the welcome
			t.Fatal(err)
		}
		if _, err := pc.WriteToUDPAddrPort(pl.Seal(nil, relaywire.TypeClient, relaywire.AppendLayerMsg(nil, 0, 0)), n.e.Addr()); err != nil {
			t.Fatal(err)
		}
		n.wantDrop(t, "client_rights", before+1)
	})
	t.Run("a flood of layer choices", func(t *testing.T) {
		before := n.drops(t, "client_rate")
		taken := len(sfu.taken())
		start := time.Now()
		for i := range 2000 {
			send(layerMsg(200, uint8(i%3)))
		}
		n.wantDrop(t, "client_rate", before+1500)
		allowed := relay.LayerBurst + relay.DefaultLayerRate*time.Since(start).Seconds() + 1
		if served := len(sfu.taken()) - taken; float64(served) > allowed {
			t.Fatalf("the flood reached the SFU %d times, the rate allows %.0f", served, allowed)
		}
	})
}

// TestRelayClientLayerRepeat: the client says its one-layer choice again
// (at most once a second) when the media shows the node did not take it:
// packets of several layers in turn (every layer: the choice was lost),
// or of a lower layer before any of the chosen one came; media of one
// lower layer after the chosen one came is the node's fallback while the
// chosen layer is not live (docs/relay-protocol.md, "Layers"), and is not
// answered with the choice again.
func TestRelayClientLayerRepeat(t *testing.T) {
	sfu := &layerSFU{}
	n := startClientNode(t, func(c *relay.Config) { c.Local = sfu })
	sfu.e.Store(n.e)
	tok, sec := mintRights(t, "standup", "viewer", false, true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := relayclient.Dial(ctx, relayclient.Config{Server: n.e.Addr(), Token: tok, Secret: sec, Room: "standup",
		Local: netip.MustParseAddrPort("127.0.0.1:0"), Subscribe: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	testkit.WaitFor(t, 5*time.Second, "the track announced", func() bool { return len(c.Received()) == 1 })
	id, _ := sfu.subscribed()
	var seq uint16
	media := func(layers []uint8, d time.Duration) { // a packet every 10 ms, layers in turn
		for end, i := time.Now().Add(d), 0; time.Now().Before(end); i++ {
			seq++
			b := []byte{0x80, 96, byte(seq >> 8), byte(seq), 0, 0, 0, 0, 0, 0, 0, 1}
			if err := n.e.SendClientMedia(id, 200, layers[i%len(layers)], b); err != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := c.SetLayer(200, 2); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "the choice at the SFU", func() bool { return len(sfu.taken()) == 1 })
	// the chosen layer, then the fallback to layer 1 for 2.5 s: not said again
	media([]uint8{2}, 200*time.Millisecond)
	media([]uint8{1}, 2500*time.Millisecond)
	if got := sfu.taken(); len(got) != 1 {
		t.Fatalf("under the fallback the choice was said again: the SFU took %v", got)
	}
	// every layer in turn (the choice lost): said again
	media([]uint8{0, 1, 2}, 1500*time.Millisecond)
	testkit.WaitFor(t, 5*time.Second, "the choice said again", func() bool { return len(sfu.taken()) >= 2 })
	if got := sfu.taken(); got[1] != "200/2" {
		t.Fatalf("the SFU took %v", got)
	}
}
