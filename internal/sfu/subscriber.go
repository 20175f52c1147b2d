package sfu

// A subscriber's downlink: its transport-cc feedback taken into its
// send-side estimate (package gcc), the estimate the layer choice uses, and
// the public view of it (Subscriber).

import (
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// twccExtID returns the negotiated id of the transport-wide sequence
// number extension, 0 when not negotiated.
func twccExtID(exts []webrtc.RTPHeaderExtensionParameter) uint8 {
	for _, e := range exts {
		if e.URI == sdp.TransportCCURI && e.ID > 0 && e.ID < 15 {
			return uint8(e.ID)
		}
	}
	return 0
}

// twccFeedback takes a subscriber's transport-cc feedback into its
// estimate; every sender's RTCP reader may call it with the same packet.
func (p *participant) twccFeedback(fb *rtcp.TransportLayerCC) {
	if p.own == nil || p.own.cc == nil {
		return
	}
	ok, news := p.own.cc.Feedback(fb, time.Now().UnixNano())
	switch {
	case !ok:
		p.s.m.twccBad.Inc()
	case news:
		p.s.m.twccFeedback.Inc()
	}
}

// estimate returns the subscriber's downlink estimate in bit/s, 0 when
// unknown: the lower of its REMB (when it sends one) and the send-side
// estimate from its transport-cc feedback (when it sends that). Both
// estimate the same path; the lower is the one not yet disproved.
func (p *participant) estimate() uint64 {
	remb := p.bwe.Load()
	var cc uint64
	if p.own != nil && p.own.cc != nil {
		cc = p.own.cc.Estimate(time.Now().UnixNano())
	}
	switch {
	case remb == 0:
		return cc
	case cc == 0:
		return remb
	}
	return min(remb, cc)
}

// SubscriberState is what the node knows of one subscriber's downlink:
// for tests and diagnostics.
type SubscriberState struct {
	// Estimate is what the layer choice uses (the lower of the two
	// below when both are known); REMB is the client's, TWCC the node's
	// own from the transport-cc feedback. Bit/s, 0 unknown.
	Estimate, REMB, TWCC uint64
	// Tracks are the simulcast tracks the subscriber receives.
	Tracks []SubscribedTrack
}

// SubscribedTrack is one simulcast track a subscriber receives.
type SubscribedTrack struct {
	Layer    int      // the layer forwarded now, -1 none yet
	Target   int      // the layer wanted (switched to on its keyframe)
	MaxLayer int      // the highest the subscriber asked for (its tile size)
	Bitrates []uint64 // each layer's measured bit/s, low to high
	Sizes    [][2]int // each layer's frame size from its keyframes, 0x0 unknown
}

// Subscriber returns the state of the first session of identity.
func (s *Server) Subscriber(identity string) (SubscriberState, bool) {
	s.mu.Lock()
	var p *participant
	for _, x := range s.sessions {
		if x.identity == identity {
			p = x
			break
		}
	}
	s.mu.Unlock()
	if p == nil {
		return SubscriberState{}, false
	}
	st := SubscriberState{Estimate: p.estimate(), REMB: p.bwe.Load()}
	if p.own != nil && p.own.cc != nil {
		st.TWCC = p.own.cc.Estimate(time.Now().UnixNano())
	}
	p.negMu.Lock()
	var downs []*downTrack
	for t, d := range p.downs {
		if t.simulcast() {
			downs = append(downs, d)
		}
	}
	p.negMu.Unlock()
	for _, d := range downs {
		d.mu.Lock()
		tr := SubscribedTrack{Layer: d.cur, Target: d.target, MaxLayer: d.maxLayer}
		d.mu.Unlock()
		d.t.mu.Lock()
		for _, l := range d.t.layers {
			var b uint64
			var sz [2]int
			if l != nil {
				b = l.bitrate.Load()
				sz[0], sz[1] = l.frameSize()
			}
			tr.Bitrates = append(tr.Bitrates, b)
			tr.Sizes = append(tr.Sizes, sz)
		}
		d.t.mu.Unlock()
		st.Tracks = append(st.Tracks, tr)
	}
	return st, true
}
