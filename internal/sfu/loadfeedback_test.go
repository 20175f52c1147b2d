package sfu

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestLoadFeedbackClients: `traverse load --feedback` clients
// (loadgen.WithFeedback) negotiate transport-cc for audio and video with
// the node, and the node receives what a browser sends: the publisher's
// sender reports and transport-wide sequence numbers (answered with
// transport-cc feedback), the subscriber's transport-cc feedback (its
// estimate) and receiver reports.
func TestLoadFeedbackClients(t *testing.T) {
	requireOwnPath(t)
	h := newHarness(t, Config{})
	api, err := loadgen.NewAPI(false, netip.Addr{}, loadgen.WithFeedback(true))
	if err != nil {
		t.Fatal(err)
	}
	pub := h.dialWith(api, loadgen.ClientConfig{Room: "fb", Identity: "pub", Publish: true, VideoBitrate: 500_000})
	sub := h.dialWith(api, loadgen.ClientConfig{Room: "fb", Identity: "sub", Subscribe: true})
	<-pub.Connected()
	<-sub.Connected()
	// Both sides of the publisher's session carry the extension and the
	// feedback type in both media sections.
	for name, sdp := range map[string]string{"offer": pub.PC().LocalDescription().SDP, "answer": pub.PC().RemoteDescription().SDP} {
		for _, kind := range []string{"m=audio", "m=video"} {
			i := strings.Index(sdp, kind)
			if i < 0 {
				t.Fatalf("%s has no %s section", name, kind)
			}
			sec := sdp[i:]
			if j := strings.Index(sec[2:], "m="); j >= 0 {
				sec = sec[:j+2]
			}
			if !strings.Contains(sec, "transport-wide-cc") || !strings.Contains(sec, "transport-cc") {
				t.Errorf("%s %s section lacks the transport-cc extension or feedback:\n%s", name, kind, sec)
			}
		}
	}
	rrs := func() uint64 {
		var m dto.Metric
		_ = h.s.m.subscriberLoss.Write(&m)
		return m.GetHistogram().GetSampleCount()
	}
	testkit.WaitFor(t, 10*time.Second, "feedback both ways", func() bool {
		st := h.s.feedback.Stats()
		sst, _ := h.s.Subscriber("sub")
		return st.SenderReport > 0 && st.TWCC > 0 && testutilCounter(h.s.m.twccFeedback) > 0 && sst.TWCC > 0 && rrs() > 0 &&
			sub.Receives(1, 1, 50)
	})
	st := h.s.feedback.Stats()
	t.Logf("node: publisher SRs %d, TWCC feedback to publisher %d, NACKs %d; subscriber TWCC feedback %v, RRs %d",
		st.SenderReport, st.TWCC, st.NACKs, testutilCounter(h.s.m.twccFeedback), rrs())
	if bad := testutilCounter(h.s.m.twccBad); bad != 0 {
		t.Errorf("%v transport-cc feedback packets refused", bad)
	}
	// Loopback loses nothing: the interceptors in the read path leave the
	// clients' loss accounting at zero.
	for _, tr := range sub.Tracks() {
		if tr.Lost() != 0 {
			t.Errorf("%s track: %d lost on loopback", tr.Kind, tr.Lost())
		}
	}
}
