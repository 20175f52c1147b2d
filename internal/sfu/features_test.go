package sfu

import (
	"slices"
	"testing"
	"time"

	"github.com/pion/rtcp"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestDataChannelRelay: a message on one participant's data channel
// reaches every other participant's.
func TestDataChannelRelay(t *testing.T) {
	h := newHarness(t, Config{})
	a := h.dial(loadgen.ClientConfig{Room: "d", Identity: "a", Publish: true, Subscribe: true, VideoBitrate: -1})
	b := h.dial(loadgen.ClientConfig{Room: "d", Identity: "b", Publish: true, Subscribe: true, VideoBitrate: -1})
	c := h.dial(loadgen.ClientConfig{Room: "d", Identity: "c", Subscribe: true, VideoBitrate: -1})
	for _, x := range []*loadgen.Client{a, b, c} {
		<-x.Connected()
	}
	testkit.WaitFor(t, 10*time.Second, "the message at b and c", func() bool {
		_ = a.SendData("hello from a") // until the node's side of every channel is open
		return slices.Contains(b.Data(), "hello from a") && slices.Contains(c.Data(), "hello from a")
	})
	if slices.Contains(a.Data(), "hello from a") {
		t.Error("the sender got its own message back")
	}
}

// TestActiveSpeaker: the RFC 6464 levels of a loud and a quiet publisher
// make an active-speaker event naming the loud one only.
func TestActiveSpeaker(t *testing.T) {
	h := newHarness(t, Config{})
	events := make(chan bus.RoomEvent, 64)
	sub, err := h.bc.SubscribeRoomEvents("talk", func(e bus.RoomEvent) {
		if e.Type == bus.EventActiveSpeaker {
			events <- e
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	h.dial(loadgen.ClientConfig{Room: "talk", Identity: "loud", Publish: true, VideoBitrate: -1, AudioLevel: 20})
	h.dial(loadgen.ClientConfig{Room: "talk", Identity: "quiet", Publish: true, VideoBitrate: -1, AudioLevel: 110})
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e := <-events:
			if len(e.Speakers) == 1 && e.Speakers[0].Identity == "loud" && e.Speakers[0].Level > 90 {
				return
			}
			t.Logf("speakers %+v", e.Speakers)
		case <-timeout:
			t.Fatal("no active-speaker event naming the loud publisher alone")
		}
	}
}

// TestKeyframeRequestsThrottled: a subscriber's PLIs reach the publisher,
// at most one per PLIInterval.
func TestKeyframeRequestsThrottled(t *testing.T) {
	h := newHarness(t, Config{PLIInterval: time.Second})
	pub := h.dial(loadgen.ClientConfig{Room: "k", Identity: "pub", Publish: true, VideoBitrate: 200_000})
	sub := h.dial(loadgen.ClientConfig{Room: "k", Identity: "sub", Subscribe: true})
	<-pub.Connected()
	testkit.WaitFor(t, 10*time.Second, "video at the subscriber", func() bool { return sub.Receives(1, 1, 10) })
	ssrc := videoSSRC(sub)
	// Past the throttle window of the keyframe asked for at subscription.
	time.Sleep(1100 * time.Millisecond)
	fwd0, thr0 := testutilCounter(h.s.m.pliForwarded), testutilCounter(h.s.m.pliThrottled)
	start := time.Now()
	for range 10 {
		if err := sub.PC().WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: ssrc}}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	testkit.WaitFor(t, 5*time.Second, "the PLIs counted", func() bool {
		return testutilCounter(h.s.m.pliForwarded)+testutilCounter(h.s.m.pliThrottled)-fwd0-thr0 >= 10
	})
	// The ten PLIs take about 200 ms; on a loaded machine they (and their
	// handling) can spread over more than one interval, and each interval
	// they span may forward one.
	spread := time.Since(start)
	want := 1 + float64(spread/time.Second)
	if f := testutilCounter(h.s.m.pliForwarded) - fwd0; f < 1 || f > want {
		t.Errorf("%v PLIs forwarded in %v, want 1 (at most %v over that time)", f, spread.Round(time.Millisecond), want)
	}
}

// nackSetup starts a harness with cfg, a video publisher, and a
// subscriber whose SRTP replay protection is off (so resent copies
// arrive), and waits for video at the subscriber. It returns the
// subscriber, its video stats and the video's SSRC at the subscriber.
func nackSetup(t *testing.T, cfg Config) (*harness, *loadgen.Client, *loadgen.RecvStats, uint32) {
	t.Helper()
	h := newHarness(t, cfg)
	pub := h.dial(loadgen.ClientConfig{Room: "n", Identity: "pub", Publish: true, VideoBitrate: 300_000})
	dupAPI, err := loadgen.NewDuplicateTolerantAPI()
	if err != nil {
		t.Fatal(err)
	}
	h.api = dupAPI
	sub := h.dial(loadgen.ClientConfig{Room: "n", Identity: "sub", Subscribe: true})
	<-pub.Connected()
	video := waitVideo(t, sub, 30, anyLayer)
	ssrc := videoSSRC(sub)
	return h, sub, video, ssrc
}

// nackRecent NACKs the 10th to 8th packets before the subscriber's last
// video packet and waits for their retransmissions, answered from the
// cache.
func nackRecent(t *testing.T, h *harness, sub *loadgen.Client, video *loadgen.RecvStats, ssrc uint32) {
	t.Helper()
	late0, ans0 := video.Late(), testutilCounter(h.s.m.nacksAnswered)
	last := video.LastSeq()
	nack := &rtcp.TransportLayerNack{SenderSSRC: 1, MediaSSRC: ssrc,
		Nacks: rtcp.NackPairsFromSequenceNumbers([]uint16{last - 10, last - 9, last - 8})}
	if err := sub.PC().WriteRTCP([]rtcp.Packet{nack}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "3 retransmissions at the subscriber", func() bool {
		return video.Late()-late0 >= 3 && testutilCounter(h.s.m.nacksAnswered)-ans0 >= 3
	})
}

// TestNACKAnsweredFromTrackCache: a subscriber's NACK for packets it had
// is answered from the track's shared cache with the subscriber's own
// sequence numbers; a NACK beyond the cache goes unanswered.
func TestNACKAnsweredFromTrackCache(t *testing.T) {
	h, sub, video, ssrc := nackSetup(t, Config{})
	late0, ans0 := video.Late(), testutilCounter(h.s.m.nacksAnswered)
	last := video.LastSeq()
	nack := &rtcp.TransportLayerNack{SenderSSRC: 1, MediaSSRC: ssrc,
		Nacks: rtcp.NackPairsFromSequenceNumbers([]uint16{last - 10, last - 9, last - 8, last - 7, last - 6})}
	if err := sub.PC().WriteRTCP([]rtcp.Packet{nack}); err != nil {
		t.Fatal(err)
	}
	// The subscriber had these packets (its SRTP replay protection is off
	// so that the copies arrive).
	testkit.WaitFor(t, 5*time.Second, "5 retransmissions at the subscriber", func() bool {
		return video.Late()-late0 >= 5 && testutilCounter(h.s.m.nacksAnswered)-ans0 >= 5
	})
	missed0 := testutilCounter(h.s.m.nacksMissed)
	old := &rtcp.TransportLayerNack{SenderSSRC: 1, MediaSSRC: ssrc,
		Nacks: rtcp.NackPairsFromSequenceNumbers([]uint16{video.LastSeq() + 1000})}
	if err := sub.PC().WriteRTCP([]rtcp.Packet{old}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "the unanswerable NACK counted", func() bool {
		return testutilCounter(h.s.m.nacksMissed)-missed0 >= 1
	})
}
