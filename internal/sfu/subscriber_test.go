package sfu

import (
	"net/netip"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// twccAPI is a load client's API with browser-like RTCP (loadgen's
// WithFeedback): it negotiates transport-cc and sends transport-cc
// feedback, and no REMB.
func twccAPI(t *testing.T) *webrtc.API {
	t.Helper()
	api, err := loadgen.NewAPI(false, netip.Addr{}, loadgen.WithFeedback(true))
	if err != nil {
		t.Fatal(err)
	}
	return api
}

// TestTWCCSubscriberEstimate: a pion subscriber that sends transport-cc
// feedback and no REMB, on the own data path, gets an estimate from it (none
// of its feedback refused), and with it the top layer of a simulcast
// publisher on unconstrained loopback; with the own RTCP path, none of
// the subscriber's RTCP goes through pion's.
func TestTWCCSubscriberEstimate(t *testing.T) {
	requireOwnPath(t)
	h := newHarness(t, Config{PLIInterval: 100 * time.Millisecond})
	pub := h.dial(loadgen.ClientConfig{Room: "twcc", Identity: "pub", Publish: true, Simulcast: true, VideoBitrate: 800_000})
	sub := h.dialWith(twccAPI(t), loadgen.ClientConfig{Room: "twcc", Identity: "sub", Subscribe: true})
	<-pub.Connected()
	<-sub.Connected()
	var st SubscriberState
	// The top layer can be reached after the first few feedback packets
	// (the sooner the keyframe request, the sooner), with the estimate
	// still ramping up: wait for what the layer and the audio need.
	testkit.WaitFor(t, 15*time.Second, "a transport-cc estimate for the top layer, and the top layer", func() bool {
		st, _ = h.s.Subscriber("sub")
		return st.TWCC >= 800_000 && len(st.Tracks) == 1 && st.Tracks[0].Layer == 2
	})
	t.Logf("estimate %d kbit/s (transport-cc %d, REMB %d), %+v; feedback %v, refused %v", st.Estimate/1000, st.TWCC/1000,
		st.REMB, st.Tracks, testutilCounter(h.s.m.twccFeedback), testutilCounter(h.s.m.twccBad))
	if st.REMB != 0 || st.Estimate != st.TWCC {
		t.Errorf("estimate %d, REMB %d, transport-cc %d: want the transport-cc one alone", st.Estimate, st.REMB, st.TWCC)
	}
	if bad := testutilCounter(h.s.m.twccBad); bad != 0 {
		t.Errorf("%v transport-cc feedback packets refused", bad)
	}
	// Not absurd.
	if st.TWCC > 10_000_000 {
		t.Errorf("transport-cc estimate %d on unconstrained loopback for 800 kbit/s + audio", st.TWCC)
	}
	if own, viaPion := h.s.OwnRTCPPackets(); own == 0 || viaPion != 0 {
		t.Errorf("own RTCP path took %d packets, pion's readers got %d", own, viaPion)
	}
}
