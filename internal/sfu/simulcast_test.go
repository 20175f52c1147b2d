package sfu

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/loadgen/loadgentest"
	"github.com/traverse-rtc/traverse/internal/rtpcodec"
	"github.com/traverse-rtc/traverse/internal/rtpcodec/rtpcodectest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestSimulcastFollowsSubscriberBandwidth: a publisher sends three layers
// (300 kbit/s, 600 kbit/s, 1.2 Mbit/s); a subscriber that reports a low
// REMB gets the low layer, and moves up as its estimate is lifted, each
// switch on a keyframe without a gap in its sequence numbers.
func TestSimulcastFollowsSubscriberBandwidth(t *testing.T) {
	h := newHarness(t, Config{PLIInterval: 100 * time.Millisecond})
	pub := h.dial(loadgen.ClientConfig{Room: "sim", Identity: "pub", Publish: true, Simulcast: true, VideoBitrate: 1_200_000})
	sub := h.dial(loadgen.ClientConfig{Room: "sim", Identity: "sub", Subscribe: true})
	sub.SetREMB(150_000)
	<-pub.Connected()
	video := waitVideo(t, sub, 20, anyLayer)
	steps := []struct {
		remb  uint64
		layer int
	}{{150_000, 0}, {5_000_000, 2}, {700_000, 1}, {150_000, 0}, {0, 2}}
	for _, st := range steps {
		sub.SetREMB(st.remb)
		testkit.WaitFor(t, 10*time.Second, "layer for the estimate", func() bool {
			if st.remb == 0 {
				// An unknown estimate: the subscriber gets the best
				// layer. Forget it on every poll, since a REMB sent
				// before SetREMB(0) may still arrive and set it again.
				h.s.mu.Lock()
				for _, p := range h.s.sessions {
					p.bwe.Store(0)
				}
				h.s.mu.Unlock()
			}
			before := video.Packets()
			if video.Layer() != st.layer {
				return false
			}
			// Still flowing on that layer.
			time.Sleep(100 * time.Millisecond)
			return video.Packets() > before && video.Layer() == st.layer
		})
		t.Logf("REMB %d bit/s -> layer %d (packets %d, lost %d)", st.remb, video.Layer(), video.Packets(), video.Lost())
	}
	// Switching rewrote sequence numbers: no gap at any switch.
	if lost := video.Lost(); lost > 0 {
		t.Errorf("%d packets missing in the subscriber's sequence across layer switches", lost)
	}
	if n := testutilCounter(h.s.m.layerSwitches); n < 4 {
		t.Errorf("%v layer switches counted, want at least 4", n)
	}
}

// TestSimulcastStepsDownOnLoss: a subscriber that sends no REMB (as a
// browser using transport-cc) gets the top layer, steps down a layer per
// lossy receiver report, and climbs back once the reports are clean.
func TestSimulcastStepsDownOnLoss(t *testing.T) {
	h := newHarness(t, Config{PLIInterval: 100 * time.Millisecond})
	pub := h.dial(loadgen.ClientConfig{Room: "loss", Identity: "pub", Publish: true, Simulcast: true, VideoBitrate: 1_200_000})
	sub := h.dial(loadgen.ClientConfig{Room: "loss", Identity: "sub", Subscribe: true})
	<-pub.Connected()
	video := waitVideo(t, sub, 20, 2)
	var ssrc uint32
	for _, tr := range sub.PC().GetTransceivers() {
		if r := tr.Receiver(); r != nil && r.Track() != nil && r.Track().Kind() == webrtc.RTPCodecTypeVideo {
			ssrc = uint32(r.Track().SSRC())
		}
	}
	report := func(fraction uint8) {
		_ = sub.PC().WriteRTCP([]rtcp.Packet{&rtcp.ReceiverReport{SSRC: 1, Reports: []rtcp.ReceptionReport{{SSRC: ssrc, FractionLost: fraction}}}})
	}
	for _, want := range []int{1, 0} {
		testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("layer %d under loss", want), func() bool {
			report(100) // 39 % lost
			time.Sleep(100 * time.Millisecond)
			return video.Layer() == want
		})
	}
	testkit.WaitFor(t, 15*time.Second, "the top layer again once loss stops", func() bool {
		report(0)
		time.Sleep(100 * time.Millisecond)
		return video.Layer() == 2
	})
}

// TestSimulcastMaxLayerRequest: a subscriber that shows a video small asks
// for a lower layer over the bus (RequestLayer) and gets it; asking for
// the top again lifts the cap. Asked by size, it gets the lowest layer
// whose frame size (from the layers' keyframes: a 640x480 camera here,
// not the nominal 1280x720) covers it.
func TestSimulcastMaxLayerRequest(t *testing.T) {
	h := newHarness(t, Config{PLIInterval: 100 * time.Millisecond})
	pub := h.dial(loadgen.ClientConfig{Room: "size", Identity: "pub", Publish: true, Simulcast: true, VideoBitrate: 1_200_000,
		VideoWidth: 640, VideoHeight: 480})
	sig := loadgen.NewBusSignaler(h.bc, "node1")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sub := loadgentest.Dial(t, h.api, sig, loadgen.ClientConfig{Room: "size", Identity: "sub", Subscribe: true})
	<-pub.Connected()
	video := waitVideo(t, sub, 20, 2)
	for _, want := range []int{0, 1, 2} {
		if _, err := h.bc.Request(ctx, "node1", bus.Request{Type: bus.RequestLayer, Session: sig.Session(),
			Layer: &bus.LayerRequest{Track: "video", MaxLayer: want}}); err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("layer %d", want), func() bool { return video.Layer() == want })
	}
	testkit.WaitFor(t, 10*time.Second, "every layer's size from its keyframes", func() bool {
		st, _ := h.s.Subscriber("sub")
		return len(st.Tracks) == 1 && fmt.Sprint(st.Tracks[0].Sizes) == "[[160 120] [320 240] [640 480]]"
	})
	// The size the client shows the video at, for the track of one stream
	// (nominal sizes would give 0, 1 and 1 for the middle three).
	for _, c := range []struct{ w, h, want int }{{160, 90, 0}, {320, 180, 1}, {321, 180, 1}, {480, 270, 2}, {160, 0, 0}, {1920, 1080, 2}} {
		if _, err := h.bc.Request(ctx, "node1", bus.Request{Type: bus.RequestLayer, Session: sig.Session(),
			Layer: &bus.LayerRequest{Track: "video", StreamID: "pub", Width: c.w, Height: c.h}}); err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("layer %d for %dx%d", c.want, c.w, c.h), func() bool { return video.Layer() == c.want })
	}
	for _, l := range []bus.LayerRequest{{Track: "nosuch", MaxLayer: 0}, {Track: "video", StreamID: "other", MaxLayer: 0}} {
		_, err := h.bc.Request(ctx, "node1", bus.Request{Type: bus.RequestLayer, Session: sig.Session(), Layer: &l})
		if bus.StatusOf(err) != bus.StatusNotFound {
			t.Fatalf("%+v: %v", l, err)
		}
	}
}

func TestLayerForSize(t *testing.T) {
	sized := func(w, h int) *layer {
		l := &layer{}
		l.learnSize(rtpcodec.VP8, rtpcodectest.VP8Key(uint16(w), uint16(h)))
		return l
	}
	for _, c := range []struct {
		name   string
		layers [maxLayers]*layer
		cases  [][3]int // w, h, want
	}{
		{"nominal", [maxLayers]*layer{{}, {}, {}}, [][3]int{
			{0, 0, 0}, {320, 180, 0}, {320, 0, 0}, {0, 180, 0}, {321, 180, 1}, {320, 240, 1},
			{640, 360, 1}, {641, 300, 2}, {3840, 2160, 2}}},
		{"640x480 camera", [maxLayers]*layer{sized(160, 120), sized(320, 240), sized(640, 480)}, [][3]int{
			{0, 0, 0}, {160, 120, 0}, {320, 180, 1}, {320, 240, 1}, {480, 270, 2}, {1280, 720, 2}}},
		{"two layers, the lowest left out", [maxLayers]*layer{nil, sized(320, 240), sized(640, 480)}, [][3]int{
			{0, 0, 1}, {100, 100, 1}, {321, 0, 2}}},
		{"one layer known", [maxLayers]*layer{{}, sized(480, 270), {}}, [][3]int{
			{320, 180, 0}, {480, 270, 1}, {640, 360, 2}}},
	} {
		tr := &pubTrack{layers: c.layers}
		for _, k := range c.cases {
			if got := tr.layerForSize(k[0], k[1]); got != k[2] {
				t.Errorf("%s: %dx%d: layer %d, want %d", c.name, k[0], k[1], got, k[2])
			}
		}
	}
}

// TestSimulcastAsksAgainForKeyframe: with a publisher that sends keyframes
// only when asked (as browsers do), a subscriber whose keyframe request
// fell inside the per-layer throttle (another subscriber had just asked)
// still gets its new layer: the node asks again while it waits.
func TestSimulcastAsksAgainForKeyframe(t *testing.T) {
	h := newHarness(t, Config{PLIInterval: 2 * time.Second})
	pub := h.dial(loadgen.ClientConfig{Room: "kf", Identity: "pub", Publish: true, Simulcast: true,
		VideoBitrate: 1_200_000, KeyframeInterval: time.Hour})
	<-pub.Connected()
	video := func(c *loadgen.Client) *loadgen.RecvStats {
		for _, tr := range c.Tracks() {
			if tr.Kind == "video" && tr.Packets() > 5 {
				return tr
			}
		}
		return nil
	}
	sub1 := h.dial(loadgen.ClientConfig{Room: "kf", Identity: "sub1", Subscribe: true})
	sub1.SetREMB(150_000)
	testkit.WaitFor(t, 10*time.Second, "sub1 on the low layer", func() bool {
		v := video(sub1)
		return v != nil && v.Layer() == 0
	})
	time.Sleep(2100 * time.Millisecond) // let the throttle of layer 2 expire
	// sub2 takes the top layer: its keyframe request on layer 2 starts a
	// fresh 2 s throttle window.
	sub2 := h.dial(loadgen.ClientConfig{Room: "kf", Identity: "sub2", Subscribe: true})
	testkit.WaitFor(t, 10*time.Second, "sub2 on the top layer", func() bool {
		v := video(sub2)
		return v != nil && v.Layer() == 2
	})
	// sub1 now wants layer 2 too; its first request is throttled.
	sub1.SetREMB(5_000_000)
	testkit.WaitFor(t, 8*time.Second, "sub1 on the top layer", func() bool { return video(sub1).Layer() == 2 })
}
