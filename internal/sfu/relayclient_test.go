package sfu

import (
	"bytes"
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/rtp"

	"github.com/traverse-rtc/traverse/client/relayclient"
	"github.com/traverse-rtc/traverse/internal/cascade/relayauth"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/loadgen/loadgentest"
	"github.com/traverse-rtc/traverse/internal/metricstest"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestRelayClientToWebRTCSubscriber: a relay client publishes VP8 and Opus
// through a node's relay port with a token; a pion subscriber on that
// node receives both like any publisher's tracks, and its keyframe
// requests reach the client.
func TestRelayClientToWebRTCSubscriber(t *testing.T) {
	e, bc := cascadeBus(t)
	tokenKey := bytes.Repeat([]byte("token-key-"), 4)
	n := startCascadeNode(t, e, "nodeA", func(c *Config) { c.CascadeClientAuth = relayauth.Verifier(tokenKey) })
	s, reg := n.s, n.reg

	api, err := loadgen.NewAPI(false, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sub, err := loadgen.Dial(ctx, api, loadgen.NewBusSignaler(bc, "nodeA"), loadgen.ClientConfig{Room: "r1", Identity: "viewer", Subscribe: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })

	now := time.Now()
	tok, sec, err := relayauth.Mint(tokenKey, signal.Claims{Room: "r1", Identity: "ingest", Publish: true, Expires: now.Add(time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	plis := make(chan struct{}, 1)
	c, err := relayclient.Dial(ctx, relayclient.Config{Server: s.Cascade().Addr(), Token: tok, Secret: sec, Room: "r1",
		Local: netip.MustParseAddrPort("127.0.0.1:0"),
		Tracks: []relayclient.Track{
			{ID: "cam", Video: true, MimeType: "video/VP8", ClockRate: 90000},
			{ID: "mic", MimeType: "audio/opus", ClockRate: 48000, Channels: 2, Fmtp: "minptime=10;useinbandfec=1"},
		},
		OnFeedback: func(uint8, uint8, []byte) {
			select {
			case plis <- struct{}{}:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if got := s.RemoteTracks("r1"); got != 2 {
		t.Fatalf("%d client tracks in the room, want 2", got)
	}
	loadgentest.RelayAV(t, c)
	testkit.WaitFor(t, 20*time.Second, "the WebRTC subscriber receiving the relay client's video and audio", func() bool {
		return sub.Receives(1, 1, 50)
	})
	select {
	case <-plis:
	case <-time.After(10 * time.Second):
		t.Fatal("no keyframe request reached the relay client")
	}
	if n := metricstest.Value(t, reg, "traverse_relay_client_media_total"); n < 100 {
		t.Fatalf("%v client packets counted", n)
	}
}

// relayReceiver is a receiving relay client's record: its tracks and the
// packets of each.
type relayReceiver struct {
	mu     sync.Mutex
	tracks map[uint8]relayclient.RecvTrack
	pkts   map[uint8]int
	last   map[uint8][]byte
}

func newRelayReceiver() *relayReceiver {
	return &relayReceiver{tracks: map[uint8]relayclient.RecvTrack{}, pkts: map[uint8]int{}, last: map[uint8][]byte{}}
}

func (r *relayReceiver) config(c *relayclient.Config) {
	c.Subscribe = true
	c.OnTrack = func(t relayclient.RecvTrack) {
		r.mu.Lock()
		r.tracks[t.Index] = t
		r.mu.Unlock()
	}
	c.OnRTP = func(track, _ uint8, rtp []byte) {
		r.mu.Lock()
		r.pkts[track]++
		r.last[track] = append(r.last[track][:0], rtp...)
		r.mu.Unlock()
	}
}

// find returns the index of a track match accepts that got at least n
// packets.
func (r *relayReceiver) find(match func(relayclient.RecvTrack) bool, n int) (uint8, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, t := range r.tracks {
		if match(t) && r.pkts[i] >= n {
			return i, true
		}
	}
	return 0, false
}

func (r *relayReceiver) receives(id string, n int) (uint8, bool) {
	return r.find(func(t relayclient.RecvTrack) bool { return t.ID == id }, n)
}

func (r *relayReceiver) byKind(video bool, n int) (uint8, bool) {
	return r.find(func(t relayclient.RecvTrack) bool { return t.Video == video }, n)
}

func mintRelay(t testing.TB, key []byte, room, id string, pub, sub bool) (string, []byte) {
	t.Helper()
	tok, sec, err := relayauth.Mint(key, signal.Claims{Room: room, Identity: id, Publish: pub, Subscribe: sub,
		Expires: time.Now().Add(time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	return tok, sec
}

// TestRelayClientReceivesWebRTCPublisher: a relay client with the
// subscribe right receives a pion publisher's video and audio through the
// relay port, and its keyframe request reaches the publisher.
func TestRelayClientReceivesWebRTCPublisher(t *testing.T) {
	n, tokenKey := relayNodeWithPublisher(t, loadgen.ClientConfig{Room: "r1", Identity: "alice", Publish: true, VideoBitrate: 300_000})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	tok, sec := mintRelay(t, tokenKey, "r1", "recorder", false, true)
	rx := newRelayReceiver()
	cfg := relayclient.Config{Server: n.s.Cascade().Addr(), Token: tok, Secret: sec, Room: "r1", Local: netip.MustParseAddrPort("127.0.0.1:0")}
	rx.config(&cfg)
	c, err := relayclient.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	testkit.WaitFor(t, 20*time.Second, "the relay client receiving the publisher's video and audio", func() bool {
		_, v := rx.byKind(true, 50)
		_, a := rx.byKind(false, 50)
		return v && a
	})
	vid, _ := rx.byKind(true, 50)
	for _, tr := range c.Received() {
		if tr.Publisher == "" || tr.ClockRate == 0 || tr.MimeType == "" {
			t.Fatalf("track announced without its description: %+v", tr)
		}
	}
	before := n.metric(t, "traverse_sfu_pli_forwarded_total")
	testkit.WaitFor(t, 10*time.Second, "the relay client's keyframe request forwarded to the publisher", func() bool {
		_ = c.RequestKeyframe(vid, 0)
		return n.metric(t, "traverse_sfu_pli_forwarded_total") > before
	})
	if got := n.metric(t, "traverse_relay_client_sent_total"); got < 100 {
		t.Fatalf("%v messages sent to the receiving client", got)
	}
}

// TestRelayPublishToRelaySubscribe: one relay client publishes, another
// receives its packets unchanged through the same node (no WebRTC
// participant in the room), and the receiver's keyframe request reaches
// the publishing client.
func TestRelayPublishToRelaySubscribe(t *testing.T) {
	e, _ := cascadeBus(t)
	tokenKey := bytes.Repeat([]byte("token-key-"), 4)
	n := startCascadeNode(t, e, "nodeA", func(c *Config) { c.CascadeClientAuth = relayauth.Verifier(tokenKey) })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ptok, psec := mintRelay(t, tokenKey, "r1", "ingest", true, false)
	plis := make(chan []byte, 1)
	p, err := relayclient.Dial(ctx, relayclient.Config{Server: n.s.Cascade().Addr(), Token: ptok, Secret: psec, Room: "r1",
		Local: netip.MustParseAddrPort("127.0.0.1:0"), Tracks: []relayclient.Track{{ID: "cam", Video: true, MimeType: "video/VP8", ClockRate: 90000}},
		OnFeedback: func(_, _ uint8, b []byte) {
			select {
			case plis <- append([]byte(nil), b...):
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	stok, ssec := mintRelay(t, tokenKey, "r1", "viewer", false, true)
	rx := newRelayReceiver()
	cfg := relayclient.Config{Server: n.s.Cascade().Addr(), Token: stok, Secret: ssec, Room: "r1", Local: netip.MustParseAddrPort("127.0.0.1:0")}
	rx.config(&cfg)
	s, err := relayclient.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	var want []byte
	testkit.WaitFor(t, 10*time.Second, "the receiver getting the publisher's packets", func() bool {
		pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: 7, SSRC: 1111, Marker: true},
			Payload: append([]byte{0x10, 0x00}, make([]byte, 300)...)}
		want, _ = pkt.Marshal()
		_ = p.WriteRTP(0, 0, want)
		_, ok := rx.receives("cam", 20)
		return ok
	})
	idx, _ := rx.receives("cam", 20)
	rx.mu.Lock()
	got, tr := rx.last[idx], rx.tracks[idx]
	rx.mu.Unlock()
	if !bytes.Equal(got, want) {
		t.Fatal("the packet changed on its way")
	}
	if tr.Publisher != "ingest" || !tr.Video || tr.MimeType != "video/VP8" || tr.ClockRate != 90000 {
		t.Fatalf("announced %+v", tr)
	}
	testkit.WaitFor(t, 10*time.Second, "the receiver's keyframe request at the publishing client", func() bool {
		_ = s.RequestKeyframe(idx, 0)
		select {
		case b := <-plis:
			return len(b) >= 12 && b[1] == 206 && b[0]&0x1f == 1
		case <-time.After(100 * time.Millisecond):
			return false
		}
	})
}

// TestRelayClientReceiveAllocs: a remote track's packet goes to a
// receiving relay client (sealed and sent to its address) without
// allocating.
func TestRelayClientReceiveAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts do not hold under the race detector (sync.Pool drops items)")
	}
	e, _ := cascadeBus(t)
	tokenKey := bytes.Repeat([]byte("token-key-"), 4)
	n := startCascadeNode(t, e, "nodeA", func(c *Config) { c.CascadeClientAuth = relayauth.Verifier(tokenKey) })
	s := n.s
	if err := s.AddRemoteTrack(RemoteTrack{Room: "r1", Publisher: "pub", Track: "v", Node: 9, Kind: "video", MimeType: "video/VP8",
		ClockRate: 90000, Layers: 1}); err != nil {
		t.Fatal(err)
	}
	rx := newRelayReceiver()
	c := dialReceiver(t, n, tokenKey, "viewer", rx.config)
	testkit.WaitFor(t, 5*time.Second, "the remote track announced to the client", func() bool { return len(c.Received()) == 1 })
	allocs := deliverAllocs(t, s, 200)
	if allocs != 0 {
		t.Fatalf("%v allocations per packet to a receiving relay client", allocs)
	}
	if sent := n.metric(t, "traverse_relay_client_sent_total"); sent < 201 {
		t.Fatalf("%v messages sent to the client, want the 201 packets and the announcement", sent)
	}
	// a burst of 201 on loopback may overflow the client's socket buffer
	testkit.WaitFor(t, 5*time.Second, "the packets at the client", func() bool { _, ok := rx.receives("v", 50); return ok })

	// one layer chosen: each packet is rewritten (sequence number,
	// timestamp, SSRC) into the client's buffer, still without allocating
	idx := c.Received()[0].Index
	if err := c.SetLayer(idx, 0); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "the choice at the node", func() bool { return clientChoice(s, idx) == 0 })
	key := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: 0, SSRC: 5},
		Payload: append([]byte{0x10, 0}, make([]byte, 998)...)}
	raw, err := key.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	(*cascadeLocal)(s).DeliverMedia([]byte("r1"), []byte("pub"), []byte("v"), 0, raw) // the switch
	before := n.metric(t, "traverse_relay_client_sent_total")
	if allocs := deliverAllocs(t, s, 200); allocs != 0 {
		t.Fatalf("%v allocations per packet to a relay client with a layer chosen", allocs)
	}
	if sent := n.metric(t, "traverse_relay_client_sent_total") - before; sent < 201 {
		t.Fatalf("%v packets sent to the client with a layer chosen, want 201", sent)
	}
}

// clientChoice returns the layer choice of the receiving relay client of
// s (one) for its track index idx; -1 when there is none.
func clientChoice(s *Server, idx uint8) int {
	s.casc.mu.Lock()
	var ps []*relayPeer
	for _, p := range s.casc.peers {
		ps = append(ps, p)
	}
	s.casc.mu.Unlock()
	for _, p := range ps {
		p.r.mu.Lock()
		var o *clientOut
		if p.sub != nil {
			o = p.sub.outs[idx]
		}
		p.r.mu.Unlock()
		if o != nil {
			o.mu.Lock()
			defer o.mu.Unlock()
			return int(o.choice)
		}
	}
	return -1
}

// TestCascadeClientRate: the node's relay client rate (Config.
// CascadeClientRate, --cascade-client-rate) reaches its relay port: a
// client sending faster than it is cut and counted, under the default
// the same burst passes.
func TestCascadeClientRate(t *testing.T) {
	e, _ := cascadeBus(t)
	tokenKey := bytes.Repeat([]byte("token-key-"), 4)
	for _, tc := range []struct {
		node    string
		rate    float64
		dropped bool
	}{
		{"slow", 50, true},    // 50 frames/s, burst 5
		{"default", 0, false}, // 5,000 frames/s, burst 500
	} {
		n := startCascadeNode(t, e, tc.node, func(c *Config) {
			c.CascadeClientAuth, c.CascadeClientRate = relayauth.Verifier(tokenKey), tc.rate
		})
		tok, sec, err := relayauth.Mint(tokenKey, signal.Claims{Room: "r1", Identity: "ingest", Publish: true, Expires: time.Now().Add(time.Hour).Unix()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := relayclient.Dial(ctx, relayclient.Config{Server: n.s.Cascade().Addr(), Token: tok, Secret: sec, Room: "r1",
			Local: netip.MustParseAddrPort("127.0.0.1:0"), Tracks: []relayclient.Track{{ID: "mic", MimeType: "audio/opus", ClockRate: 48000, Channels: 2}}})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		p := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SSRC: 7}, Payload: make([]byte, 100)}
		for i := range 100 { // well under a second: 100 frames against 50 a second
			p.SequenceNumber, p.Timestamp = uint16(i), uint32(960*i)
			b, _ := p.Marshal()
			if err := c.WriteRTP(0, 0, b); err != nil {
				t.Fatal(err)
			}
		}
		testkit.WaitFor(t, 5*time.Second, tc.node+": the burst read", func() bool {
			return metricstest.Value(t, n.reg, "traverse_relay_client_media_total")+
				metricstest.Value(t, n.reg, "traverse_relay_dropped_total", "reason", "client_rate") >= 100
		})
		if got := metricstest.Value(t, n.reg, "traverse_relay_dropped_total", "reason", "client_rate"); (got > 0) != tc.dropped {
			t.Errorf("%s (rate %v): %v frames dropped for the client rate", tc.node, tc.rate, got)
		}
	}
}
