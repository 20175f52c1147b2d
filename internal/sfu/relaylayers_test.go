package sfu

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/client/relayclient"
	"github.com/traverse-rtc/traverse/internal/cascade/relay"
	"github.com/traverse-rtc/traverse/internal/cascade/relayauth"
	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/metricstest"
	"github.com/traverse-rtc/traverse/internal/rtpcodec"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// layerLog records the video packets a receiving relay client gets, in
// arrival order.
type layerLog struct {
	mu    sync.Mutex
	video uint8
	have  bool
	pkts  []layerPkt
}

type layerPkt struct {
	layer uint8
	seq   uint16
	ts    uint32
	ssrc  uint32
	key   bool
}

func (g *layerLog) config(c *relayclient.Config) {
	vp8 := rtpcodec.CodecOf("video/VP8")
	c.Subscribe = true
	c.OnTrack = func(tr relayclient.RecvTrack) {
		if tr.Video {
			g.mu.Lock()
			g.video, g.have = tr.Index, true
			g.mu.Unlock()
		}
	}
	c.OnRTP = func(track, layer uint8, b []byte) {
		var p rtp.Packet
		if p.Unmarshal(b) != nil {
			return
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.have && track == g.video {
			g.pkts = append(g.pkts, layerPkt{layer: layer, seq: p.SequenceNumber, ts: p.Timestamp, ssrc: p.SSRC,
				key: vp8.Keyframe(p.Payload)})
		}
	}
}

// relayNodeWithPublisher starts node "nodeA" taking relay clients with
// the returned token key, with a pion publisher of cfg in its room.
func relayNodeWithPublisher(t *testing.T, cfg loadgen.ClientConfig) (*cascadeNode, []byte) {
	t.Helper()
	e, bc := cascadeBus(t)
	tokenKey := bytes.Repeat([]byte("token-key-"), 4)
	n := startCascadeNode(t, e, "nodeA", func(c *Config) { c.CascadeClientAuth = relayauth.Verifier(tokenKey) })
	api, err := loadgen.NewAPI(false, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pub, err := loadgen.Dial(ctx, api, loadgen.NewBusSignaler(bc, "nodeA"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	return n, tokenKey
}

// dial dials a receiving relay client of identity into room r1 of n
// whose video the log records.
func (g *layerLog) dial(t *testing.T, n *cascadeNode, tokenKey []byte, identity string) *relayclient.Client {
	return dialReceiver(t, n, tokenKey, identity, g.config)
}

// dialReceiver dials a receiving relay client of identity into room r1
// of n; config sets its callbacks.
func dialReceiver(t testing.TB, n *cascadeNode, tokenKey []byte, identity string, config func(*relayclient.Config)) *relayclient.Client {
	t.Helper()
	tok, sec := mintRelay(t, tokenKey, "r1", identity, false, true)
	cfg := relayclient.Config{Server: n.s.Cascade().Addr(), Token: tok, Secret: sec, Room: "r1", Local: netip.MustParseAddrPort("127.0.0.1:0"),
		Subscribe: true}
	config(&cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := relayclient.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// mark is where the log is now.
func (g *layerLog) mark() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.pkts)
}

// since returns the packets from mark on.
func (g *layerLog) since(mark int) []layerPkt {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]layerPkt(nil), g.pkts[mark:]...)
}

// layersIn returns the set of layers in ps as a bit mask.
func layersIn(ps []layerPkt) int {
	m := 0
	for _, p := range ps {
		m |= 1 << p.layer
	}
	return m
}

// tailOnly reports whether the last n packets from mark on are all of
// layer l.
func (g *layerLog) tailOnly(mark, n int, l uint8) bool {
	ps := g.since(mark)
	if len(ps) < n {
		return false
	}
	for _, p := range ps[len(ps)-n:] {
		if p.layer != l {
			return false
		}
	}
	return true
}

// checkSwitch checks, in the packets from mark on, the switch from layer
// from (packets before it) to layer to: the first packet of to is a
// keyframe and continues the stream (the next sequence number, the same
// SSRC, a later timestamp); none of from follows it, and none of a third
// layer is in between.
func checkSwitch(t *testing.T, ps []layerPkt, from, to uint8) {
	t.Helper()
	checkSwitchGap(t, ps, from, to, time.Second)
}

// checkSwitchGap is checkSwitch with the timestamps at most gap apart
// across the switch (they follow the wall time: a fallback from a layer
// that stopped comes a second or more after its last packet).
func checkSwitchGap(t *testing.T, ps []layerPkt, from, to uint8, gap time.Duration) {
	t.Helper()
	first := -1
	for i, p := range ps {
		if p.layer == to {
			first = i
			break
		}
		if p.layer != from {
			t.Fatalf("packet %d of layer %d while switching from %d to %d", i, p.layer, from, to)
		}
	}
	if first < 1 {
		t.Fatalf("switch from %d to %d: no packet of %d before it (first at %d)", from, to, from, first)
	}
	a, b := ps[first-1], ps[first]
	if !b.key {
		t.Fatalf("switched to layer %d on a packet that is not a keyframe", to)
	}
	if b.seq != a.seq+1 || b.ssrc != a.ssrc || int32(b.ts-a.ts) <= 0 || int64(b.ts-a.ts) > gap.Milliseconds()*90 {
		t.Fatalf("switch from %d to %d not continuous: %+v then %+v", from, to, a, b)
	}
	for i, p := range ps[first:] {
		if p.layer != to {
			t.Fatalf("packet %d after the switch of layer %d", i, p.layer)
		}
	}
	for i := first + 1; i < len(ps); i++ {
		if ps[i].ssrc != b.ssrc || int16(ps[i].seq-ps[i-1].seq) <= 0 {
			t.Fatalf("after the switch: %+v then %+v", ps[i-1], ps[i])
		}
	}
}

// TestRelayClientLayerChoice: a relay client receiving a simulcast pion
// publisher gets every layer until it chooses; then only the chosen
// layer, as one stream: a switch waits for a keyframe of the new layer
// (the node asks the publisher for it: the publisher sends no keyframe
// unasked during the test) and continues the sequence numbers, SSRC and
// timestamps; a pause stops the track, a resume starts again at a
// keyframe after the last packet sent; LayerAll gives every layer again.
func TestRelayClientLayerChoice(t *testing.T) {
	n, tokenKey := relayNodeWithPublisher(t, loadgen.ClientConfig{Room: "r1", Identity: "alice", Publish: true, Simulcast: true,
		VideoBitrate: 600_000, KeyframeInterval: time.Hour})
	g := &layerLog{}
	c := g.dial(t, n, tokenKey, "recorder")
	testkit.WaitFor(t, 20*time.Second, "every simulcast layer at the relay client", func() bool {
		return layersIn(g.since(0)) == 7
	})
	var vid uint8
	for _, tr := range c.Received() {
		if tr.Video {
			vid = tr.Index
			if tr.Layers != 3 {
				t.Fatalf("the video track is announced with %d layers", tr.Layers)
			}
		}
	}
	// one layer: 0
	// the choice asks the publisher for a keyframe of the layer (forwarded,
	// or throttled right after the keyframes asked at the start: the
	// WebRTC subscribers' per-layer throttle)
	asked := func() float64 {
		return n.metric(t, "traverse_sfu_pli_forwarded_total") + n.metric(t, "traverse_sfu_pli_throttled_total")
	}
	plis := asked()
	m := g.mark()
	if err := c.SetLayer(vid, 0); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "layer 0 alone", func() bool { return g.tailOnly(m, 60, 0) })
	if asked() <= plis {
		t.Fatal("no keyframe asked of the publisher for the layer choice")
	}
	// switch to 2 at its keyframe, continuous
	m = g.mark() - 1
	if err := c.SetLayer(vid, 2); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the switch to layer 2", func() bool { return g.tailOnly(m, 60, 2) })
	checkSwitch(t, g.since(m), 0, 2)
	// pause: nothing more of the track
	if err := c.SetLayer(vid, relayclient.LayerNone); err != nil {
		t.Fatal(err)
	}
	var last int
	testkit.WaitFor(t, 10*time.Second, "the track paused (nothing for 500 ms)", func() bool {
		last = g.mark()
		time.Sleep(500 * time.Millisecond)
		return g.mark() == last
	})
	// resume on layer 1: from a keyframe, after the last packet sent
	if err := c.SetLayer(vid, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "layer 1 after the pause", func() bool { return g.tailOnly(last-1, 60, 1) })
	checkSwitch(t, g.since(last-1), 2, 1)
	// every layer again, each as published
	m = g.mark()
	if err := c.SetLayer(vid, relayclient.LayerAll); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "every layer again", func() bool { return layersIn(g.since(m)) == 7 })
	if sw := n.metric(t, "traverse_sfu_layer_switches_total"); sw < 1 { // 0 to 2 (a resume starts anew)
		t.Fatalf("%v layer switches counted", sw)
	}
}

// rawRelaySub is a receiving relay client that says what it likes: the
// genuine secret, from its own socket.
func rawRelaySub(t *testing.T, server netip.AddrPort, tok string, sec []byte, room string) func(track, layer uint8) {
	t.Helper()
	conn := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	l, err := relaywire.NewClientLink(sec, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := relaywire.AppendHello(nil, &relaywire.Hello{Room: room, Subscribe: true})
	h, err := l.SealHello(nil, tok, body)
	if err != nil {
		t.Fatal(err)
	}
	send := func(f []byte) {
		if _, err := conn.WriteToUDPAddrPort(f, server); err != nil {
			t.Fatal(err)
		}
	}
	send(h)
	b := make([]byte, 2048)
	for deadline := time.Now().Add(5 * time.Second); ; {
		_ = conn.SetReadDeadline(deadline)
		k, _, err := conn.ReadFromUDPAddrPort(b)
		if err != nil {
			t.Fatalf("no welcome: %v", err)
		}
		if hd, _, err := l.Open(b[:k]); err == nil && hd.Type == relaywire.TypeWelcome {
			break
		}
	}
	return func(track, layer uint8) {
		send(l.Seal(nil, relaywire.TypeClient, relaywire.AppendLayerMsg(nil, track, layer)))
	}
}

// TestRelayClientLayerChoiceAttacks: layer choices for a track of another
// room (the index another room's client was given), for an index never
// given, for a layer the track lacks, and from a client without the
// subscribe right are refused and counted, and change nothing for the
// genuine receiver.
func TestRelayClientLayerChoiceAttacks(t *testing.T) {
	n, tokenKey := relayNodeWithPublisher(t, loadgen.ClientConfig{Room: "r1", Identity: "alice", Publish: true, Simulcast: true,
		VideoBitrate: 300_000})
	g := &layerLog{}
	g.dial(t, n, tokenKey, "viewer")
	tok, sec := mintRelay(t, tokenKey, "r1", "viewer", false, true)
	testkit.WaitFor(t, 20*time.Second, "every layer at the genuine receiver", func() bool { return layersIn(g.since(0)) == 7 })
	g.mu.Lock()
	vid := g.video
	g.mu.Unlock()
	drops := func(reason string) float64 {
		return max(0, metricstest.Value(t, n.reg, "traverse_relay_dropped_total", "reason", reason))
	}
	server := n.s.Cascade().Addr()
	t.Run("a track of another room", func(t *testing.T) {
		otok, osec := mintRelay(t, tokenKey, "r2", "snoop", false, true)
		choose := rawRelaySub(t, server, otok, osec, "r2")
		before := drops("client_track")
		choose(vid, 0)
		testkit.WaitFor(t, 5*time.Second, "client_track counted", func() bool { return drops("client_track") > before })
	})
	t.Run("a track never given", func(t *testing.T) {
		before := drops("client_track")
		choose := rawRelaySub(t, server, tok, sec, "r1") // the genuine secret, another socket: rebinds
		choose(vid+100, 0)
		testkit.WaitFor(t, 5*time.Second, "client_track counted", func() bool { return drops("client_track") > before })
		// a layer the track lacks: the parser's (no layer 3 on the wire)
		mb := drops("malformed")
		choose(vid, 3)
		testkit.WaitFor(t, 5*time.Second, "malformed counted", func() bool { return drops("malformed") > mb })
	})
	t.Run("without the subscribe right", func(t *testing.T) {
		ptok, psec := mintRelay(t, tokenKey, "r1", "ingest", true, false)
		conn := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
		l, _ := relaywire.NewClientLink(psec, false, 0)
		body, _ := relaywire.AppendHello(nil, &relaywire.Hello{Room: "r1", Publish: true})
		h, _ := l.SealHello(nil, ptok, body)
		before := drops("client_rights")
		if _, err := conn.WriteToUDPAddrPort(h, server); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 2048)
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := conn.ReadFromUDPAddrPort(b); err != nil { // the welcome: bound
			t.Fatal(err)
		}
		if _, err := conn.WriteToUDPAddrPort(l.Seal(nil, relaywire.TypeClient, relaywire.AppendLayerMsg(nil, vid, 0)), server); err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, 5*time.Second, "client_rights counted", func() bool { return drops("client_rights") > before })
	})
}

// TestSubTrackNames: a track is announced to relay clients only when the
// track message can tell it (names up to relaywire.MaxName bytes, fmtp up
// to MaxFmtp, audio or video); others are not offered (counted by
// traverse_sfu_relay_client_untold_total).
func TestSubTrackNames(t *testing.T) {
	long := strings.Repeat("x", relaywire.MaxName)
	for _, tc := range []struct {
		name, pub, id, fmtp string
		kind                webrtc.RTPCodecType
		ok                  bool
	}{
		{"names of 64 bytes", long, long, "", webrtc.RTPCodecTypeVideo, true},
		{"a track id of 65 bytes", "alice", long + "x", "", webrtc.RTPCodecTypeVideo, false},
		{"a publisher of 65 bytes", long + "x", "cam", "", webrtc.RTPCodecTypeAudio, false},
		{"an fmtp line of 256 bytes", "alice", "cam", strings.Repeat("f", relaywire.MaxFmtp+1), webrtc.RTPCodecTypeVideo, false},
		{"no kind", "alice", "cam", "", 0, false},
	} {
		tr := &pubTrack{id: tc.id, kind: tc.kind, nrids: 3, remote: &remoteSource{key: relay.StreamKey{Publisher: tc.pub}},
			codec: webrtc.RTPCodecParameters{RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: "video/VP8", ClockRate: 90000, SDPFmtpLine: tc.fmtp}}}
		st := tr.subTrack()
		if (st != nil) != tc.ok {
			t.Errorf("%s: announced %v, want %v", tc.name, st != nil, tc.ok)
			continue
		}
		if st != nil {
			if _, err := relaywire.AppendSubTrack(nil, st); err != nil || st.Layers != 3 {
				t.Errorf("%s: %+v does not encode: %v", tc.name, st, err)
			}
		}
	}
}

// TestRelayClientLayerChoiceRelayPublisher: the keyframe a layer choice
// needs is asked of a relay client that publishes the track (its feedback
// for that layer), and the receiver switches at it: relay client to
// relay client, three layers, no WebRTC peer in the room.
func TestRelayClientLayerChoiceRelayPublisher(t *testing.T) {
	_, _, g, s, vid := relayPublisherRoom(t, 1)
	m := g.mark() - 1
	if err := s.SetLayer(vid, 0); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the switch to layer 0", func() bool { return g.tailOnly(m, 50, 0) })
	checkSwitch(t, g.since(m), 1, 0)
}

// relayPublisher is relay client "ingest" publishing video track "cam"
// of three layers into room r1: a packet of each layer every 5 ms (for at
// most 25 s), a keyframe of a layer when the node asks for one (its
// feedback) and never unasked; a layer whose stopped is set is not sent.
type relayPublisher struct {
	want    [3]atomic.Bool // a keyframe asked for, by layer
	stopped [3]atomic.Bool
}

func startRelayPublisher(t *testing.T, n *cascadeNode, tokenKey []byte) *relayPublisher {
	t.Helper()
	rp := &relayPublisher{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ptok, psec := mintRelay(t, tokenKey, "r1", "ingest", true, false)
	p, err := relayclient.Dial(ctx, relayclient.Config{Server: n.s.Cascade().Addr(), Token: ptok, Secret: psec, Room: "r1",
		Local:  netip.MustParseAddrPort("127.0.0.1:0"),
		Tracks: []relayclient.Track{{ID: "cam", Video: true, MimeType: "video/VP8", ClockRate: 90000, Layers: 3}},
		OnFeedback: func(_, layer uint8, _ []byte) {
			if layer < 3 {
				rp.want[layer].Store(true)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var pkts [3]rtp.Packet
		for l := range pkts {
			pkts[l] = rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: uint16(1000 * l), SSRC: uint32(100 + l),
				Timestamp: uint32(5000 * l)}, Payload: make([]byte, 200)}
		}
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for range 5000 {
			for l := range pkts {
				if rp.stopped[l].Load() {
					continue
				}
				pk := &pkts[l]
				pk.SequenceNumber++
				pk.Timestamp += 450
				pk.Payload[0], pk.Payload[1] = 0x10, 0x01 // a frame's start, not a keyframe
				if rp.want[l].Swap(false) {
					pk.Payload[1] = 0x00 // a keyframe
				}
				b, _ := pk.Marshal()
				_ = p.WriteRTP(0, uint8(l), b)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return rp
}

// relayPublisherRoom starts node "nodeA" taking relay clients, a
// relayPublisher and a receiving relay client whose video the log records;
// once the client gets every layer it chooses layer and gets it alone. It
// returns the publisher, the log, the client and the video's index.
func relayPublisherRoom(t *testing.T, layer uint8) (*cascadeNode, *relayPublisher, *layerLog, *relayclient.Client, uint8) {
	t.Helper()
	e, _ := cascadeBus(t)
	tokenKey := bytes.Repeat([]byte("token-key-"), 4)
	n := startCascadeNode(t, e, "nodeA", func(c *Config) { c.CascadeClientAuth = relayauth.Verifier(tokenKey) })
	rp := startRelayPublisher(t, n, tokenKey)
	g := &layerLog{}
	s := g.dial(t, n, tokenKey, "viewer")
	testkit.WaitFor(t, 10*time.Second, "every layer at the receiver", func() bool { return layersIn(g.since(0)) == 7 })
	g.mu.Lock()
	vid := g.video
	g.mu.Unlock()
	m := g.mark()
	if err := s.SetLayer(vid, layer); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("layer %d alone", layer), func() bool { return g.tailOnly(m, 50, layer) })
	return n, rp, g, s, vid
}

// TestRelayClientLayerFallback: a relay client that chose the top layer
// gets, while its publisher stops sending that layer, the best live layer
// below it (as a WebRTC subscriber would), switched to at a keyframe of
// that layer with the stream continuous; when the top layer comes back it
// switches back to it at its keyframe. With the two upper layers gone it
// gets the lowest, and the middle one when that one alone comes back.
func TestRelayClientLayerFallback(t *testing.T) {
	n, rp, g, _, vid := relayPublisherRoom(t, 2)

	// the publisher drops its top layer (a browser short of uplink)
	m := g.mark() - 1
	rp.stopped[2].Store(true)
	testkit.WaitFor(t, 10*time.Second, "the fallback to layer 1", func() bool { return g.tailOnly(m, 50, 1) })
	checkSwitchGap(t, g.since(m), 2, 1, 5*time.Second)
	if got := clientChoice(n.s, vid); got != 2 {
		t.Fatalf("the client's choice at the node is %d after the fallback, want 2 (what it asked for)", got)
	}

	// the top layer is back: back to it at its keyframe
	m = g.mark() - 1
	rp.stopped[2].Store(false)
	testkit.WaitFor(t, 10*time.Second, "back to layer 2", func() bool { return g.tailOnly(m, 50, 2) })
	checkSwitch(t, g.since(m), 1, 2)

	// the two upper layers stop: down to layer 0; layer 1 back (the top
	// one still missing): up to layer 1, the best live one below the
	// choice
	m = g.mark() - 1
	rp.stopped[1].Store(true)
	rp.stopped[2].Store(true)
	testkit.WaitFor(t, 10*time.Second, "the fallback to layer 0", func() bool { return g.tailOnly(m, 50, 0) })
	checkSwitchGap(t, g.since(m), 2, 0, 5*time.Second)
	m = g.mark() - 1
	rp.stopped[1].Store(false)
	testkit.WaitFor(t, 10*time.Second, "up to layer 1", func() bool { return g.tailOnly(m, 50, 1) })
	checkSwitch(t, g.since(m), 0, 1)
}

// BenchmarkRelayClientForward: one 1,000-byte packet of a remote track
// through the node to one receiving relay client (DeliverMedia, forward,
// clientOut.send, seal, one sendto on loopback), the client receiving
// every layer as published, and with one layer chosen (the packet
// rewritten into the client's buffer on its way).
func BenchmarkRelayClientForward(b *testing.B) {
	for _, tc := range []struct {
		name  string
		layer uint8
	}{{"all", relaywire.LayerAll}, {"one-layer", 0}} {
		b.Run(tc.name, func(b *testing.B) {
			e, _ := cascadeBus(b)
			tokenKey := bytes.Repeat([]byte("token-key-"), 4)
			n := startCascadeNode(b, e, "nodeA", func(c *Config) { c.CascadeClientAuth = relayauth.Verifier(tokenKey) })
			s := n.s
			if err := s.AddRemoteTrack(RemoteTrack{Room: "r1", Publisher: "pub", Track: "v", Node: 9, Kind: "video",
				MimeType: "video/VP8", ClockRate: 90000, Layers: 3}); err != nil {
				b.Fatal(err)
			}
			c := dialReceiver(b, n, tokenKey, "viewer", func(*relayclient.Config) {})
			testkit.WaitFor(b, 5*time.Second, "the track announced", func() bool { return len(c.Received()) == 1 })
			pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: 1, SSRC: 5},
				Payload: append([]byte{0x10, 0}, make([]byte, 998)...)} // a keyframe: a one-layer choice switches at it
			raw, err := pkt.Marshal()
			if err != nil {
				b.Fatal(err)
			}
			if tc.layer != relaywire.LayerAll {
				idx := c.Received()[0].Index
				if err := c.SetLayer(idx, tc.layer); err != nil {
					b.Fatal(err)
				}
				testkit.WaitFor(b, 5*time.Second, "the choice at the node", func() bool { return clientChoice(s, idx) == int(tc.layer) })
			}
			local := (*cascadeLocal)(s)
			room, pub, track := []byte("r1"), []byte("pub"), []byte("v")
			local.DeliverMedia(room, pub, track, 0, raw)
			raw[12] = 0x10 // the rest (after the 12-byte header): not keyframes
			raw[13] = 0x01
			seq := uint16(2)
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			b.ResetTimer()
			for range b.N {
				raw[2], raw[3] = byte(seq>>8), byte(seq)
				seq++
				local.DeliverMedia(room, pub, track, 0, raw)
			}
		})
	}
}

// TestRelayClientQuietRebind: a receiving relay client that went quiet
// long enough for the node to forget it (its quiet time shortened to a
// second) comes back and is given its tracks anew, under other indices;
// its layer choice follows its track to the new index (the client
// re-maps it by the track's publisher and id and says it again), and the
// old index is gone from what it receives.
func TestRelayClientQuietRebind(t *testing.T) {
	e, _ := cascadeBus(t)
	tokenKey := bytes.Repeat([]byte("token-key-"), 4)
	n := startCascadeNode(t, e, "nodeA", func(c *Config) {
		c.CascadeClientAuth = relayauth.Verifier(tokenKey)
		c.cascadeClientIdle = time.Second
	})
	var blocked atomic.Bool // the receiver's path to the node is cut
	front, _ := testkit.UDPProxy(t, n.s.Cascade().Addr(), func(bool) bool { return blocked.Load() })
	g := &layerLog{}
	rx := dialReceiver(t, n, tokenKey, "viewer", func(c *relayclient.Config) {
		g.config(c)
		c.Server, c.Keepalive = front, 300*time.Millisecond
	})
	// an audio track first (index 0), then the video (index 1); the audio
	// leaves, so that the video gets index 0 when the node gives the
	// client its tracks anew
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mtok, msec := mintRelay(t, tokenKey, "r1", "mic", true, false)
	mic, err := relayclient.Dial(ctx, relayclient.Config{Server: n.s.Cascade().Addr(), Token: mtok, Secret: msec, Room: "r1",
		Local: netip.MustParseAddrPort("127.0.0.1:0"), Tracks: []relayclient.Track{{ID: "mic", MimeType: "audio/opus", ClockRate: 48000, Channels: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mic.Close)
	testkit.WaitFor(t, 5*time.Second, "the audio track at the receiver", func() bool { return len(rx.Received()) == 1 })
	startRelayPublisher(t, n, tokenKey)
	testkit.WaitFor(t, 10*time.Second, "every video layer at the receiver", func() bool { return layersIn(g.since(0)) == 7 })
	mic.Close() // quiet: the node unbinds it and its track leaves
	testkit.WaitFor(t, 10*time.Second, "the audio track gone", func() bool { return len(rx.Received()) == 1 && rx.Received()[0].Video })
	old := rx.Received()[0].Index
	if old == 0 {
		t.Fatal("the video track was given index 0 first; the test needs it moved")
	}
	m := g.mark()
	if err := rx.SetLayer(old, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "layer 1 alone", func() bool { return g.tailOnly(m, 50, 1) })

	// quiet: the node forgets the receiver (one client bound: the
	// publisher), then hears from it again
	blocked.Store(true)
	testkit.WaitFor(t, 10*time.Second, "the receiver unbound", func() bool { return n.metric(t, "traverse_relay_clients") == 1 })
	m = g.mark()
	blocked.Store(false)
	testkit.WaitFor(t, 10*time.Second, "layer 1 alone under the new index", func() bool {
		g.mu.Lock()
		moved := g.video != old
		g.mu.Unlock()
		return moved && g.tailOnly(m, 50, 1)
	})
	testkit.WaitFor(t, 5*time.Second, "the video under its new index alone (the old one gone)", func() bool {
		r := rx.Received()
		return len(r) == 1 && r[0].Index != old
	})
	if got := clientChoice(n.s, rx.Received()[0].Index); got != 1 {
		t.Fatalf("the node has choice %d for the video's new index, want 1", got)
	}
}
