package sfu

import (
	"context"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/loadgen/loadgentest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestMuteTrack: the operator's mute (RequestMute on the publisher's
// session) stops the node forwarding that track, whatever the publisher
// sends, and leaves its other tracks flowing; unmuted, the track resumes
// for the subscriber without a gap in its sequence numbers.
func TestMuteTrack(t *testing.T) {
	h := newHarness(t, Config{PLIInterval: 100 * time.Millisecond})
	sig := loadgen.NewBusSignaler(h.bc, "node1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	loadgentest.Dial(t, h.api, sig, loadgen.ClientConfig{Room: "mute", Identity: "pub", Publish: true, VideoBitrate: 300_000})
	sub := h.dial(loadgen.ClientConfig{Room: "mute", Identity: "sub", Subscribe: true})
	video := waitVideo(t, sub, 20, anyLayer)
	var audio *loadgen.RecvStats
	testkit.WaitFor(t, 10*time.Second, "audio", func() bool {
		for _, tr := range sub.Tracks() {
			if tr.Kind == "audio" && tr.Packets() > 5 {
				audio = tr
			}
		}
		return audio != nil
	})
	mute := func(track string, muted bool) error {
		_, err := h.bc.Request(ctx, "node1", bus.Request{Type: bus.RequestMute, Session: sig.Session(),
			Mute: &bus.MuteRequest{Track: track, Muted: muted}})
		return err
	}
	// stopped waits until the track has received nothing for 300 ms.
	stopped := func(tr *loadgen.RecvStats, what string) {
		t.Helper()
		testkit.WaitFor(t, 5*time.Second, what, func() bool {
			before := tr.Packets()
			time.Sleep(300 * time.Millisecond)
			return tr.Packets() == before
		})
	}
	flowing := func(tr *loadgen.RecvStats, what string) {
		t.Helper()
		before := tr.Packets()
		testkit.WaitFor(t, 10*time.Second, what, func() bool { return tr.Packets() > before+10 })
	}

	if err := mute("video", true); err != nil {
		t.Fatal(err)
	}
	stopped(video, "video stops when muted")
	flowing(audio, "audio still flows")
	if err := mute("video", false); err != nil {
		t.Fatal(err)
	}
	flowing(video, "video resumes when unmuted")
	if lost := video.Lost(); lost > 0 {
		t.Errorf("%d video packets missing in the subscriber's sequence across the mute", lost)
	}
	if err := mute("*", true); err != nil {
		t.Fatal(err)
	}
	stopped(video, "video stops when every track is muted")
	stopped(audio, "audio stops when every track is muted")
	if err := mute("*", false); err != nil {
		t.Fatal(err)
	}
	flowing(audio, "audio resumes")
	flowing(video, "video resumes")
	if err := mute("nosuch", true); bus.StatusOf(err) != bus.StatusNotFound {
		t.Fatalf("unknown track: %v", err)
	}
}

// TestSessionStats: RequestStats tells how a session reaches the node and
// its bit rates in and out.
func TestSessionStats(t *testing.T) {
	h := newHarness(t, Config{})
	sig := loadgen.NewBusSignaler(h.bc, "node1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	loadgentest.Dial(t, h.api, sig, loadgen.ClientConfig{Room: "stats", Identity: "pub", Publish: true, VideoBitrate: 300_000})
	subSig := loadgen.NewBusSignaler(h.bc, "node1")
	sub := loadgentest.Dial(t, h.api, subSig, loadgen.ClientConfig{Room: "stats", Identity: "sub", Subscribe: true})
	waitVideo(t, sub, 20, anyLayer)
	stats := func(session string) bus.SessionStats {
		r, err := h.bc.Request(ctx, "node1", bus.Request{Type: bus.RequestStats, Session: session})
		if err != nil || r.Stats == nil {
			t.Fatalf("stats: %+v %v", r, err)
		}
		return *r.Stats
	}
	testkit.WaitFor(t, 10*time.Second, "bit rates measured", func() bool {
		p, s := stats(sig.Session()), stats(subSig.Session())
		return p.Path == "udp" && p.Remote != "" && p.BitrateIn > 100_000 && s.Path == "udp" && s.BitrateOut > 100_000 && s.BitrateIn == 0
	})
}
