package sfu

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// manualClient is a pion participant driven step by step by a test: it
// answers the node's offers only when told to, and can send its own offer
// at a chosen moment, so that the test fixes the order of the
// negotiation's messages.
type manualClient struct {
	t       *testing.T
	h       *harness
	pc      *webrtc.PeerConnection
	session string
	offers  chan string

	mu     sync.Mutex // guards recv
	recv   map[string]*atomic.Uint64
	answer sync.WaitGroup // the answering goroutine
	stop   chan struct{}
}

// manual joins room with only a data channel and applies the join answer.
func (h *harness) manual(room, identity string, publish bool) *manualClient {
	t := h.t
	t.Helper()
	pc, err := h.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	c := &manualClient{t: t, h: h, pc: pc, session: loadgen.NewSessionID(), offers: make(chan string, 32),
		recv: map[string]*atomic.Uint64{}, stop: make(chan struct{})}
	t.Cleanup(func() {
		close(c.stop)
		c.answer.Wait()
		_, _ = h.bc.Request(context.Background(), "node1", bus.Request{Type: bus.RequestLeave, Session: c.session})
		_ = pc.Close()
	})
	pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		n := &atomic.Uint64{}
		c.mu.Lock()
		c.recv[tr.StreamID()+"/"+tr.Kind().String()] = n
		c.mu.Unlock()
		buf := make([]byte, 1600)
		for {
			if _, _, err := tr.Read(buf); err != nil {
				return
			}
			n.Add(1)
		}
	})
	if _, err := pc.CreateDataChannel("data", nil); err != nil {
		t.Fatal(err)
	}
	sub, err := h.bc.SubscribeSession("node1", c.session, func(m bus.SessionMessage) {
		if m.Type == bus.SessionOffer {
			c.offers <- m.SDP
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Unsubscribe)
	offer := c.localOffer()
	rep, err := h.bc.Request(context.Background(), "node1", bus.Request{Type: bus.RequestJoin, Session: c.session,
		Join: &bus.Join{Room: room, Identity: identity, Publish: publish, Subscribe: true, Offer: offer}})
	if err != nil {
		t.Fatal(err)
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: rep.SDP}); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *manualClient) localOffer() string {
	c.t.Helper()
	offer, err := c.pc.CreateOffer(nil)
	if err != nil {
		c.t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(c.pc)
	if err := c.pc.SetLocalDescription(offer); err != nil {
		c.t.Fatal(err)
	}
	<-gathered
	return c.pc.LocalDescription().SDP
}

// nextOffer waits for the node's next offer.
func (c *manualClient) nextOffer() string {
	c.t.Helper()
	select {
	case o := <-c.offers:
		return o
	case <-time.After(10 * time.Second):
		c.t.Fatal("no offer from the node")
		return ""
	}
}

// answerOffer applies a node offer and sends the answer.
func (c *manualClient) answerOffer(offer string) error {
	if err := c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		return err
	}
	answer, err := c.pc.CreateAnswer(nil)
	if err != nil {
		return err
	}
	if err := c.pc.SetLocalDescription(answer); err != nil {
		return err
	}
	_, err = c.h.bc.Request(context.Background(), "node1", bus.Request{Type: bus.RequestAnswer, Session: c.session, SDP: answer.SDP})
	return err
}

// answerFromNowOn answers every further node offer in order.
func (c *manualClient) answerFromNowOn() {
	c.answer.Add(1)
	go func() {
		defer c.answer.Done()
		for {
			select {
			case <-c.stop:
				return
			case o := <-c.offers:
				if err := c.answerOffer(o); err != nil {
					c.t.Errorf("answer: %v", err)
				}
			}
		}
	}()
}

// publishVideo adds a sendonly VP8 track, sends the client's own offer
// (RequestOffer), applies the node's answer and then sends video packets
// (each one a keyframe, so that any subscriber starts at once).
func (c *manualClient) publishVideo() {
	c.t.Helper()
	tr, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000},
		"video", "manual")
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.pc.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
		c.t.Fatal(err)
	}
	offer := c.localOffer()
	rep, err := c.h.bc.Request(context.Background(), "node1", bus.Request{Type: bus.RequestOffer, Session: c.session, SDP: offer})
	if err != nil {
		c.t.Fatal(err)
	}
	if err := c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: rep.SDP}); err != nil {
		c.t.Fatal(err)
	}
	c.answer.Add(1)
	go func() {
		defer c.answer.Done()
		tick := time.NewTicker(30 * time.Millisecond)
		defer tick.Stop()
		payload := make([]byte, 200)
		copy(payload, []byte{0x10, 0x00, 0x9d, 0x01, 0x2a}) // RFC 7741 descriptor, key frame header
		pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, Marker: true}, Payload: payload}
		for {
			select {
			case <-c.stop:
				return
			case <-tick.C:
				pkt.SequenceNumber++
				pkt.Timestamp += 2700
				_ = tr.WriteRTP(&pkt)
			}
		}
	}()
}

// receives reports whether c has received at least min packets of the
// track of kind from stream.
func (c *manualClient) receives(stream, kind string, min uint64) bool {
	c.mu.Lock()
	n := c.recv[stream+"/"+kind]
	c.mu.Unlock()
	return n != nil && n.Load() >= min
}

func (c *manualClient) describe() string {
	var s []string
	c.mu.Lock()
	for k, n := range c.recv {
		s = append(s, fmt.Sprintf("%s:%d", k, n.Load()))
	}
	c.mu.Unlock()
	for _, x := range c.pc.GetTransceivers() {
		s = append(s, fmt.Sprintf("%s/%s/%s", x.Mid(), x.Kind(), x.Direction()))
	}
	return strings.Join(s, " ")
}

// published counts the track_published events of room by identity.
func (h *harness) published(room string) func(identity string) int {
	h.t.Helper()
	var mu sync.Mutex
	n := map[string]int{}
	sub, err := h.bc.SubscribeRoomEvents(room, func(e bus.RoomEvent) {
		if e.Type == bus.EventTrackPublished {
			mu.Lock()
			n[e.Identity]++
			mu.Unlock()
		}
	})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(sub.Unsubscribe)
	return func(identity string) int {
		mu.Lock()
		defer mu.Unlock()
		return n[identity]
	}
}

// TestGlareClientOfferWins: the client's own offer crosses a node offer it
// never applied (as the protocol says, a client with its offer out drops
// the node's). The node withdraws its offer and answers; the mid it had
// given its audio subscription in the withdrawn offer must not capture
// the client's new video m-section (the transceiver keeps its mid, and
// the client numbers its sections without having seen it: with numeric
// node mids both were "1"), and the node offers its subscription again
// afterwards. Before the fix the node could not withdraw at all (pion
// v4.2.20 refuses a rollback) and answered the client's offer "conflict".
func TestGlareClientOfferWins(t *testing.T) {
	h := newHarness(t, Config{})
	b := h.manual("glare", "b", true)
	a := h.dial(loadgen.ClientConfig{Room: "glare", Identity: "a", Publish: true, Subscribe: true, VideoBitrate: -1})
	_ = b.nextOffer() // a's audio; dropped: b's own offer is about to go out
	b.publishVideo()
	b.answerFromNowOn()
	deadline := time.Now().Add(15 * time.Second)
	for !(b.receives("a", "audio", 5) && a.Receives(1, 0, 5)) {
		if time.Now().After(deadline) {
			t.Fatalf("b does not receive a's audio or a not b's video: b %s", b.describe())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := testutilCounter(h.s.m.glare); n != 1 {
		t.Fatalf("glare counter %v, want 1", n)
	}
}

// TestSubscriptionChangesWaitForAnswer: while a node offer carrying
// publisher a's tracks waits for its answer, a leaves and c publishes.
// The node changes no sender while the offer is out (the old code could move
// c's tracks onto a's transceivers, mids of the outstanding offer, which
// pion clients happen to cope with) and offers c's tracks after the
// answer; the subscriber must end up receiving c. This passed before the
// fix too: it guards the behaviour, it did not reproduce a failure.
func TestSubscriptionChangesWaitForAnswer(t *testing.T) {
	h := newHarness(t, Config{})
	published := h.published("wait")
	b := h.manual("wait", "b", false)
	a := h.dial(loadgen.ClientConfig{Room: "wait", Identity: "a", Publish: true, Subscribe: true, VideoBitrate: 100_000})
	offer := b.nextOffer() // carries some of a's tracks; b holds its answer
	testkit.WaitFor(t, 10*time.Second, "a's two tracks", func() bool { return published("a") == 2 })
	a.Close()
	testkit.WaitFor(t, 10*time.Second, "a to leave", func() bool { return h.s.Sessions() == 1 })
	h.dial(loadgen.ClientConfig{Room: "wait", Identity: "c", Publish: true, Subscribe: true, VideoBitrate: 100_000})
	testkit.WaitFor(t, 10*time.Second, "c's two tracks", func() bool { return published("c") == 2 })
	if err := b.answerOffer(offer); err != nil {
		t.Fatal(err)
	}
	b.answerFromNowOn()
	deadline := time.Now().Add(15 * time.Second)
	for !(b.receives("c", "audio", 5) && b.receives("c", "video", 5)) {
		if time.Now().After(deadline) {
			t.Fatalf("b does not receive c's audio and video: %s", b.describe())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// withdrawalPair negotiates a node-like offerer (audio it sends) with a
// client answerer that publishes video, then adds a track on the offerer
// and makes a second offer: it returns the offerer in have-local-offer,
// that offer and the client's answer to the first.
func withdrawalPair(t testing.TB) (*webrtc.PeerConnection, string, string) {
	t.Helper()
	api, err := loadgen.NewAPI(false, netipLoopback())
	if err != nil {
		t.Fatal(err)
	}
	node, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	client, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Close(); _ = client.Close() })
	track := func(kind, id string) *webrtc.TrackLocalStaticRTP {
		c := webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}
		if kind == "video" {
			c = webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}
		}
		tr, err := webrtc.NewTrackLocalStaticRTP(c, id, "stream-"+id)
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	if _, err := client.AddTransceiverFromTrack(track("video", "cv"), webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CreateDataChannel("data", nil); err != nil {
		t.Fatal(err)
	}
	negotiate := func(off, ans *webrtc.PeerConnection) string {
		o, err := off.CreateOffer(nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := off.SetLocalDescription(o); err != nil {
			t.Fatal(err)
		}
		if err := ans.SetRemoteDescription(o); err != nil {
			t.Fatal(err)
		}
		a, err := ans.CreateAnswer(nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := ans.SetLocalDescription(a); err != nil {
			t.Fatal(err)
		}
		if err := off.SetRemoteDescription(a); err != nil {
			t.Fatal(err)
		}
		return a.SDP
	}
	negotiate(client, node) // the join: the client offers
	if _, err := node.AddTrack(track("audio", "na")); err != nil {
		t.Fatal(err)
	}
	answer := negotiate(node, client) // a node offer, answered
	if _, err := node.AddTrack(track("video", "nv")); err != nil {
		t.Fatal(err)
	}
	for _, tx := range node.GetTransceivers() {
		if tx.Mid() == "" {
			if err := tx.SetMid("s9"); err != nil {
				t.Fatal(err)
			}
		}
	}
	o, err := node.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := node.SetLocalDescription(o); err != nil {
		t.Fatal(err)
	}
	return node, o.SDP, answer
}

func netipLoopback() netip.Addr { return netip.MustParseAddr("127.0.0.1") }

// TestWithdrawalAnswer: the made-up answer keeps the client's sections
// (its published track stays received), makes the new section inactive
// with the client's ICE credentials, and brings pion back to stable.
func TestWithdrawalAnswer(t *testing.T) {
	node, offer, last := withdrawalPair(t)
	got, err := withdrawalAnswer(offer, last)
	if err != nil {
		t.Fatal(err)
	}
	var o, a, l sdp.SessionDescription
	for _, x := range []struct {
		d *sdp.SessionDescription
		s string
	}{{&o, offer}, {&a, got}, {&l, last}} {
		if err := x.d.UnmarshalString(x.s); err != nil {
			t.Fatal(err)
		}
	}
	if len(a.MediaDescriptions) != len(o.MediaDescriptions) {
		t.Fatalf("%d sections for an offer of %d", len(a.MediaDescriptions), len(o.MediaDescriptions))
	}
	ufrag, _ := l.MediaDescriptions[0].Attribute("ice-ufrag")
	for i, m := range a.MediaDescriptions {
		mid, _ := m.Attribute("mid")
		omid, _ := o.MediaDescriptions[i].Attribute("mid")
		if mid != omid {
			t.Fatalf("section %d mid %q, offer's %q", i, mid, omid)
		}
		if u, _ := m.Attribute("ice-ufrag"); u != ufrag {
			t.Errorf("section %s ice-ufrag %q, want the client's %q", mid, u, ufrag)
		}
		if _, ok := m.Attribute("candidate"); ok {
			t.Errorf("section %s keeps candidates", mid)
		}
		_, inactive := m.Attribute("inactive")
		_, ssrc := m.Attribute("ssrc")
		if mid == "s9" && (!inactive || ssrc) {
			t.Errorf("new section: inactive %v, ssrc %v; want inactive without ssrc", inactive, ssrc)
		}
		if mid == "0" && !ssrc {
			t.Error("the client's video section lost its ssrc")
		}
	}
	if g, _ := a.Attribute("group"); g != "BUNDLE 0 1 2 s9" {
		t.Errorf("group %q", g)
	}
	if err := node.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: got}); err != nil {
		t.Fatal(err)
	}
	if st := node.SignalingState(); st != webrtc.SignalingStateStable {
		t.Fatalf("signaling state %v", st)
	}
	if _, err := withdrawalAnswer("v=0", last); err == nil {
		t.Error("garbage offer accepted")
	}
}

// FuzzWithdrawalAnswer: the client's description comes from outside
// (pion parsed it once); whatever it holds, the made-up answer is an error
// or an SDP with the offer's sections.
func FuzzWithdrawalAnswer(f *testing.F) {
	_, offer, last := withdrawalPair(f)
	f.Add(offer, last)
	f.Add(offer, "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n")
	f.Fuzz(func(t *testing.T, offer, remote string) {
		got, err := withdrawalAnswer(offer, remote)
		if err != nil {
			return
		}
		var o, a sdp.SessionDescription
		if err := o.UnmarshalString(offer); err != nil {
			t.Fatalf("accepted an offer that does not parse: %v", err)
		}
		if err := a.UnmarshalString(got); err != nil {
			t.Fatalf("answer does not parse: %v\n%s", err, got)
		}
		if len(a.MediaDescriptions) != len(o.MediaDescriptions) {
			t.Fatalf("%d sections for an offer of %d", len(a.MediaDescriptions), len(o.MediaDescriptions))
		}
	})
}
