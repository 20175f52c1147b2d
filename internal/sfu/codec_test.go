package sfu

import (
	"testing"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// h264OnlyAPI is a pion API whose video codecs are H264 only: a
// subscriber built on it cannot take a VP8 publisher's video, so the
// node's sender for that track fails to start with pion's
// ErrUnsupportedCodec when the subscriber's answer is applied.
func h264OnlyAPI(t *testing.T) *webrtc.API {
	t.Helper()
	me := &webrtc.MediaEngine{}
	for _, c := range []webrtc.RTPCodecParameters{
		{RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2,
			SDPFmtpLine: "minptime=10;useinbandfec=1"}, PayloadType: 111},
	} {
		if err := me.RegisterCodec(c, webrtc.RTPCodecTypeAudio); err != nil {
			t.Fatal(err)
		}
	}
	if err := me.RegisterCodec(webrtc.RTPCodecParameters{RTPCodecCapability: webrtc.RTPCodecCapability{
		MimeType: webrtc.MimeTypeH264, ClockRate: 90000,
		SDPFmtpLine: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"}, PayloadType: 125},
		webrtc.RTPCodecTypeVideo); err != nil {
		t.Fatal(err)
	}
	return webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithSettingEngine(loopbackSettingEngine()),
		webrtc.WithInterceptorRegistry(&interceptor.Registry{}))
}

// TestUnsupportedSubscribedTrackDoesNotFailAnswer: a subscriber whose
// answer cannot take one of the subscribed tracks (pion: "unable to start
// track, codec is not supported by remote") must still get the others;
// the node must not refuse the subscriber's answer as a bad request, and
// later tracks must still reach it.
func TestUnsupportedSubscribedTrackDoesNotFailAnswer(t *testing.T) {
	h := newHarness(t, Config{})
	sub := h.dialWith(h264OnlyAPI(t), loadgen.ClientConfig{Room: "codec", Identity: "sub", Subscribe: true})
	<-sub.Connected()
	// A VP8 + Opus publisher: the subscriber can only take its audio.
	h.dial(loadgen.ClientConfig{Room: "codec", Identity: "pub1", Publish: true, VideoBitrate: 300_000})
	testkit.WaitFor(t, 15*time.Second, "pub1's audio at the H264-only subscriber", func() bool { return sub.Receives(0, 1, 20) })
	// An audio-only publisher joining afterwards still reaches it: the
	// failed video does not wedge the subscriber's negotiation.
	h.dial(loadgen.ClientConfig{Room: "codec", Identity: "pub2", Publish: true, VideoBitrate: -1})
	testkit.WaitFor(t, 15*time.Second, "pub2's audio too", func() bool { return sub.Receives(0, 2, 20) })
	if n := testutilCounter(h.s.m.badSDP); n != 0 {
		t.Fatalf("node refused %v offers/answers as bad", n)
	}
	if n := testutilCounter(h.s.m.unsupportedTracks); n != 1 {
		t.Fatalf("unsupported tracks dropped = %v, want 1 (pub1's VP8)", n)
	}
}
