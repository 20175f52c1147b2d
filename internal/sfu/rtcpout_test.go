package sfu

import (
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/rtpfeedback"
)

// TestFastRTCPSend: with the own RTCP send the node seals its RTCP to
// fast-path clients itself (traverse_sfu_fast_rtcp_sent_total), and the
// clients' pion stacks accept every packet of it: a publisher reads
// exactly as many TWCC feedback packets and PLIs as the node sent it
// (a replayed SRTCP index would be dropped and logged), none refused,
// receiver reports with the LSR of its sender reports; the subscriber's
// sender reports go the same way.
func TestFastRTCPSend(t *testing.T) {
	h := newHarness(t, Config{FastPath: true, FastReceive: true, FastRTCPSend: true})
	p, _ := h.dialProbe("rtcp")
	sub := h.dial(loadgen.ClientConfig{Room: "rtcp", Identity: "sub", Subscribe: true})
	waitFor(t, 15*time.Second, "the subscriber to get audio and video", func() bool { return received(sub, 1, 1, 50) })

	var fb *rtpfeedback.Interceptor
	h.s.mu.Lock()
	for _, part := range h.s.sessions {
		if part.identity == "pub" && part.fast != nil && part.fast.active.Load() {
			fb = part.fast.feedback
		}
	}
	h.s.mu.Unlock()
	if fb == nil {
		t.Fatal("the publisher's session is not on the fast path")
	}
	// The client's count is read first: the node's can only be ahead.
	waitFor(t, 15*time.Second, "the publisher to have read every TWCC feedback packet and PLI the node sent it", func() bool {
		p.mu.Lock()
		twcc, plis, lsr := p.twccPkt, p.plis, len(p.rr) == 2
		for _, rep := range p.rr {
			lsr = lsr && rep.LastSenderReport != 0
		}
		p.mu.Unlock()
		sent, pli := fb.Stats().TWCC, testutilCounter(h.s.m.pliForwarded)
		return sent >= 30 && twcc == int(sent) && pli >= 1 && float64(plis) == pli && lsr
	})
	p.mu.Lock()
	if len(p.srtpErrs) > 0 {
		t.Errorf("the publisher's SRTP sessions refused packets: %q", p.srtpErrs)
	}
	p.mu.Unlock()
	waitFor(t, 5*time.Second, "sender reports to the subscriber", func() bool { return testutilCounter(h.s.m.fastReports) >= 2 })
	sent := testutilCounter(h.s.m.fastRTCPSent)
	var errs float64
	for _, r := range rtcpErrorReasons {
		errs += testutilCounter(h.s.m.fastRTCPErrors.WithLabelValues(r))
	}
	if sent < 30 || errs != 0 || fb.Stats().WriteErrors != 0 {
		t.Errorf("own RTCP: %v datagrams sent, %v errors, feedback write errors %d", sent, errs, fb.Stats().WriteErrors)
	}
}
