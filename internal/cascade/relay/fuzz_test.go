package relay

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
)

// FuzzHandleMessage feeds arbitrary authenticated message bodies (what a
// peer holding the link key may send) to the router of node B: nothing
// panics, and whatever B forwards is a relay header that parses.
func FuzzHandleMessage(f *testing.F) {
	h := &relaywire.Header{Kind: relaywire.KindMedia, HopLimit: 3, Source: nA, NDst: 3, Room: []byte("r")}
	h.Dst[0], h.Dst[1], h.Dst[2] = nB, nC, 9
	b, _ := relaywire.AppendHeader(nil, h)
	f.Add(append(b, 1, 2, 3))
	f.Add([]byte{2, 1, 0, 1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0})
	e, err := New(Config{Node: nB, Listen: netip.MustParseAddrPort("127.0.0.1:0"), Secret: secret, Local: &sfu{}, Registry: prometheus.NewRegistry()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { e.Close() })
	// A and C are addresses nothing listens on: what B forwards is checked
	// in its out queue, opened with the link of the address it goes to
	aAddr, cAddr := netip.MustParseAddrPort("127.0.0.1:9"), netip.MustParseAddrPort("127.0.0.1:10")
	if err := e.SetPeers(map[NodeID]netip.AddrPort{nA: aAddr, nC: cAddr}); err != nil {
		f.Fatal(err)
	}
	e.SetRoutes(1, map[NodeID]NodeID{nA: nA, nC: nC, 9: nC})
	al, _ := relaywire.NewLink(secret, nA, nB, 0)
	cl, _ := relaywire.NewLink(secret, nC, nB, 0)
	f.Fuzz(func(t *testing.T, msg []byte) {
		e.loop.out.n = 0
		e.handleMessage(msg, nA, e.loop)
		e.sealPending(e.loop)
		for i := 0; i < e.loop.out.n; i++ {
			rl := cl
			if e.loop.out.msgs[i].Addr == aAddr {
				rl = al
			}
			_, body, err := rl.Open(e.loop.out.msgs[i].Payload())
			if errors.Is(err, relaywire.ErrReplay) {
				continue
			}
			if err != nil {
				t.Fatalf("forwarded frame does not open: %v", err)
			}
			if _, m, err := relaywire.ParseData(body); err == nil {
				var fh relaywire.Header
				if _, err := relaywire.ParseHeader(m, &fh); err != nil {
					t.Fatalf("forwarded header does not parse: %v", err)
				}
			}
		}
		e.loop.out.n = 0
	})
}

type fuzzClients struct{ sfu }

func (*fuzzClients) ClientJoin(ClientID, ClientGrant, []relaywire.ClientTrack) error { return nil }
func (*fuzzClients) ClientLeave(ClientID, ClientGrant, []relaywire.ClientTrack)      {}
func (*fuzzClients) ClientSubscribe(ClientID, ClientGrant)                           {}
func (*fuzzClients) ClientUnsubscribe(ClientID, ClientGrant)                         {}
func (*fuzzClients) ClientFeedback(ClientID, uint8, uint8, []byte)                   {}
func (*fuzzClients) ClientLayer(_ ClientID, track, layer uint8) error {
	if layer > 2 && layer != relaywire.LayerAll && layer != relaywire.LayerNone {
		panic("a layer choice the parser should have refused")
	}
	if track > 3 {
		return ErrNoTrack
	}
	return nil
}

// FuzzClientFrames feeds arbitrary hello bodies and client messages,
// sealed with a valid client key (what a client holding a token and its
// secret may send), to node B's client path: nothing panics, and a hello
// binds the client only when its body parses.
func FuzzClientFrames(f *testing.F) {
	body, _ := relaywire.AppendHello(nil, &relaywire.Hello{Room: "r", Publish: true,
		Tracks: []relaywire.ClientTrack{{ID: "t", Kind: relaywire.KindAudio, Layers: 1, ClockRate: 48000, Mime: "audio/opus"}}})
	f.Add(body, []byte{1, 0, 0, 0, 0x80})
	f.Add([]byte{1, 'r', 0, 0}, []byte{2, 9, 0, 1})
	f.Add([]byte{1, 'r', 2, 0}, []byte{2, 0, 0, 0, 0x81, 206, 0, 2}) // a receiving client's keyframe request
	f.Add([]byte{1, 'r', 2, 0}, []byte{5, 0, 1, 0})                  // a receiving client's layer choice
	f.Add([]byte{1, 'r', 2, 0}, []byte{5, 9, 0xFF, 0})               // every layer, of a track not given
	cs := relaywire.ClientSecret([]byte("key"), "tok")
	auth := func(token []byte, now time.Time) (ClientGrant, []byte, error) {
		if string(token) != "tok" {
			return ClientGrant{}, nil, ErrConfig
		}
		return ClientGrant{Room: "r", Identity: "i", Publish: true, Subscribe: true, Expires: now.Add(time.Hour)}, cs, nil
	}
	e, err := New(Config{Node: nB, Listen: netip.MustParseAddrPort("127.0.0.1:0"), Secret: secret, Local: &fuzzClients{},
		Registry: prometheus.NewRegistry(), ClientAuth: auth, ClientRate: -1, HelloRate: -1})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { e.Close() })
	from := netip.MustParseAddrPort("127.0.0.1:9")
	cl, _ := relaywire.NewClientLink(cs, false, 0)
	seen := false // a parsable hello bound the client once (it stays bound)
	f.Fuzz(func(t *testing.T, hello, msg []byte) {
		fr, err := cl.SealHello(nil, "tok", hello)
		if err != nil {
			t.Fatal(err)
		}
		e.handleFrame(fr, from, e.loop)
		if _, perr := relaywire.ParseHello(hello); perr != nil && e.Clients() > 0 && !seen {
			t.Fatalf("an unparsable hello bound the client")
		}
		seen = seen || e.Clients() > 0
		e.handleFrame(cl.Seal(nil, relaywire.TypeClient, msg), from, e.loop)
		e.loop.out.n = 0
	})
}
