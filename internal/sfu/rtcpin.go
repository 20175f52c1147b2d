package sfu

import (
	"errors"

	"github.com/pion/rtcp"
	"github.com/pion/srtp/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/sfu/srtpseal"
)

// The own RTCP receive path (part of DataPathOwn). Without it, a client's
// SRTCP goes through pion's UDP mux reader, the ICE conn, the mux
// endpoint, the SRTCP session goroutine (decrypt, rtcp.Unmarshal to find
// the SSRCs), a buffer per SSRC, and one goroutine per sent track
// (readSenderRTCP, which parses it again) or per published layer
// (readPublisherRTCP): several goroutine wake-ups per packet, for a few
// dozen packets per second per participant.
//
// With it, SRTCP (RFC 5761 section 4: second byte 192..223) from an
// address in the own receive path's table is authenticated and decrypted
// there with the client's keys (RFC 3711 section 3.4, RFC 7714 section 9:
// one pion srtp.Context per session, every profile, with its SRTCP replay
// window), parsed once, and acted on at once on the socket's reader
// goroutine, inside the batch's cork (retransmissions leave in the
// batch's sendmmsg): clientRTCP, the same handling readSenderRTCP applies
// to what pion delivers. The publisher's sender reports go to the
// session's rtpfeedback.Interceptor (ReceiveRTCP: the LSR and DLSR of the
// node's receiver reports), which is all its pion RTCP reader did. A
// packet whose tag fails goes to pion unaltered; a replay is dropped.
//
// The reader goroutine must never block: a keyframe request for a
// publisher not on UDP (ICE-TCP: pion's write could wait on a peer that
// stopped reading) is made from a goroutine of its own, at most
// maxAsyncKeyframes at once (requestKeyframe's throttle makes nearly all
// of them return at once).

// rtcpCounters are the own RTCP path's counters.
type rtcpCounters struct {
	taken, ignored                                prometheus.Counter
	errAuth, errShort, errParse, errDecrypt, dups prometheus.Counter
}

func (m *metrics) newRTCPCounters() rtcpCounters {
	e := m.rtcpErrors
	return rtcpCounters{taken: m.rtcpTaken, ignored: m.rtcpIgnored,
		errAuth: e.WithLabelValues("auth"), errShort: e.WithLabelValues("short"), errParse: e.WithLabelValues("parse"),
		errDecrypt: e.WithLabelValues("decrypt"), dups: e.WithLabelValues("replay")}
}

// openSRTCP makes the session's SRTCP context from the client's keys.
func (sess *recvSession) openSRTCP() error {
	ctx, err := srtp.CreateContext(sess.key, sess.salt, sess.profile, srtp.SRTCPReplayProtection(srtpseal.ReplayWindow))
	if err != nil {
		return err
	}
	tag, err := sess.profile.AuthTagRTCPLen()
	if err != nil {
		return err
	}
	aead, err := sess.profile.AEADAuthTagLen()
	if err != nil {
		return err
	}
	// RTCP header, (AEAD tag), E flag and index, (authentication tag):
	// RFC 3711 section 3.4, RFC 7714 section 9.
	sess.srtcp, sess.srtcpMin = ctx, 8+aead+4+tag
	return nil
}

// interceptRTCP takes the SRTCP packet p of sess, as intercept does RTP:
// true when it was taken (acted on, or dropped as a replay or as
// unparseable), false hands it to pion unaltered. now is the batch's
// arrival (unix nanoseconds).
func (r *recvPath) interceptRTCP(sess *recvSession, p []byte, now int64) bool {
	if sess.srtcp == nil {
		return false
	}
	c := &r.rtcp
	if len(p) < sess.srtcpMin {
		c.errShort.Inc()
		return false
	}
	plain, err := sess.srtcp.DecryptRTCP(r.scratch[:0], p, &r.rtcpHdr)
	switch {
	case err == nil:
	case isDuplicated(err):
		c.dups.Inc()
		return true // pion would not know it was a replay
	case errors.Is(err, srtp.ErrFailedToVerifyAuthTag):
		c.errAuth.Inc()
		return false
	default:
		c.errDecrypt.Inc()
		return false
	}
	pkts, err := rtcp.Unmarshal(plain)
	if err != nil {
		// Authenticated, so the client's: pion would drop it too.
		c.errParse.Inc()
		return true
	}
	c.taken.Inc()
	r.s.ownRTCP.Add(1)
	f := sess.f
	if f.feedback != nil && hasSenderReport(pkts) {
		f.feedback.ReceiveRTCP(plain, now)
	}
	if p := f.part; p != nil {
		var downs []*downTrack
		if l := p.sent.Load(); l != nil {
			downs = *l
		}
		c.ignored.Add(float64(p.clientRTCP(pkts, downs, r.resent[:], true)))
	}
	return true
}

func hasSenderReport(pkts []rtcp.Packet) bool {
	for _, pkt := range pkts {
		if _, ok := pkt.(*rtcp.SenderReport); ok {
			return true
		}
	}
	return false
}

// clientRTCP acts on the RTCP packets a client sent about what the node
// sends it: keyframe requests go to the publishers, NACKs are answered
// from the track caches, REMB and transport-cc feedback make its
// bandwidth estimate, reception reports its loss. downs are the down
// tracks a media SSRC may name; buf is scratch for retransmissions.
// onReader is set on the socket's reader goroutine, which must not block.
// It returns how many packets it had no use for.
func (p *participant) clientRTCP(pkts []rtcp.Packet, downs []*downTrack, buf []byte, onReader bool) (ignored int) {
	m := p.s.m
	for _, pkt := range pkts {
		switch pk := pkt.(type) {
		case *rtcp.PictureLossIndication:
			if dt := downFor(downs, pk.MediaSSRC); dt != nil {
				p.s.keyframe(dt, onReader)
			}
		case *rtcp.FullIntraRequest:
			for _, e := range pk.FIR {
				if dt := downFor(downs, e.SSRC); dt != nil {
					p.s.keyframe(dt, onReader)
				}
			}
		case *rtcp.ReceiverEstimatedMaximumBitrate:
			p.bwe.Store(uint64(pk.Bitrate))
		case *rtcp.TransportLayerCC:
			p.twccFeedback(pk)
		case *rtcp.TransportLayerNack:
			dt := downFor(downs, pk.MediaSSRC)
			if dt == nil {
				continue
			}
			for _, pair := range pk.Nacks {
				pair.Range(func(seq uint16) bool {
					m.nacks.Inc()
					switch dt.resend(seq, buf) {
					case resendSent:
						m.nacksAnswered.Inc()
					case resendThrottled:
						m.nacksThrottled.Inc()
					default:
						m.nacksMissed.Inc()
					}
					return true
				})
			}
		case *rtcp.ReceiverReport:
			reportsLoss(m, pk.Reports, downs)
		case *rtcp.SenderReport:
			// The client's own streams are the receive path's business
			// (interceptRTCP, readPublisherRTCP); its report blocks are
			// about ours.
			reportsLoss(m, pk.Reports, downs)
		default:
			ignored++
		}
	}
	return ignored
}

// reportsLoss takes a client's reception reports into the loss histogram
// and the loss-based layer cap of the down tracks they are about.
func reportsLoss(m *metrics, reports []rtcp.ReceptionReport, downs []*downTrack) {
	for _, r := range reports {
		m.subscriberLoss.Observe(float64(r.FractionLost) / 256)
		if dt := downFor(downs, r.SSRC); dt != nil {
			dt.reportLoss(r.FractionLost)
		}
	}
}

// downFor returns the down track of downs sent with SSRC ssrc, or nil.
func downFor(downs []*downTrack, ssrc uint32) *downTrack {
	for _, d := range downs {
		if d.outSSRC() == ssrc {
			return d
		}
	}
	return nil
}

// maxAsyncKeyframes bounds the keyframe requests the own RTCP path has
// in flight to publishers whose RTCP write may block.
const maxAsyncKeyframes = 16

// keyframe asks dt's publisher for a keyframe of the layer dt gets. On
// the socket's reader (onReader) that is done in place only when the
// publisher is on UDP (pion's write then ends in the batched socket's
// queue); otherwise from a goroutine, at most maxAsyncKeyframes at once
// (past that the request is dropped, and counted as throttled).
func (s *Server) keyframe(dt *downTrack, onReader bool) {
	t := dt.t
	if !onReader || t.pub.onUDP() {
		t.requestKeyframe(dt.layer())
		return
	}
	if s.asyncKeyframes.Add(1) > maxAsyncKeyframes {
		s.asyncKeyframes.Add(-1)
		s.m.pliThrottled.Inc()
		return
	}
	l := dt.layer()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.asyncKeyframes.Add(-1)
		t.requestKeyframe(l)
	}()
}

// onUDP reports whether p's selected candidate pair is over UDP, as far
// as its own data path knows.
func (p *participant) onUDP() bool {
	if p == nil || p.own == nil {
		return false
	}
	ap := p.own.remote.Load()
	return ap != nil && ap.IsValid()
}

// OwnRTCPPackets returns how many clients' RTCP packets the own RTCP
// path (part of DataPathOwn) took, and how many pion's path delivered to the
// node's readers (each sent track's and published layer's), since the
// node started.
func (s *Server) OwnRTCPPackets() (own, pion uint64) {
	return s.ownRTCP.Load(), s.pionRTCP.Load()
}
