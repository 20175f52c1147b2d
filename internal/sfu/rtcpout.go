package sfu

import (
	"sync"

	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/srtp/v3"

	"github.com/traverse-rtc/traverse/internal/rtpfeedback"
)

// The own RTCP send (part of DataPathOwn) seals the RTCP an own-path node
// sends to a client with an SRTCP context of the node's own (RFC 3711
// section 3.4, RFC 7714 section 9; the session's local keys, as the RTP
// own data path uses) and writes it on the node's batched socket, instead of
// pion's chain (interceptor writer, PeerConnection.writeRTCP,
// DTLSTransport.WriteRTCP, SRTCP session, mux endpoint, ICE conn, UDP
// mux, one sendto per packet).
//
// SRTCP's index is per sender SSRC, and the client's replay window drops
// an index it has seen: once a session's own context has sealed a packet,
// none of its RTCP may go through pion's SRTCP session. So every RTCP
// writer of the peer connection ends in the session's rtcpOut: it is the
// first interceptor of the peer connection's chain (pion's chain binds the
// RTCP writer first to last, so the first one wraps pion's own writer and
// every other interceptor, pion's report.SenderInterceptor among them,
// and PeerConnection.WriteRTCP write through it); rtpfeedback writes to it
// directly (WithWriter) and hands its feedback over marshalled
// (CompoundWriter), and sendReports and requestKeyframe call it. The
// choice is made once per session, when the own data path activates (before
// pion starts its SRTCP session): own sealing for good if it activates,
// else pion's writer for good. A session whose pair turns to TCP later has
// no UDP destination: its RTCP is dropped and counted, never handed to
// pion (whose index would repeat ours).
type rtcpOut struct {
	f *ownPath

	// mu guards everything below and is held over a send, so that the
	// choice of path and the send are one step (activate takes it too).
	mu   sync.Mutex
	pion interceptor.RTCPWriter // pion's writer, bound by the chain; nil before
	ctx  *srtp.Context          // the session's own SRTCP context; nil: pion's path
	raw  []byte                 // a Write's packets, marshalled
	keep []rtcp.Packet          // a chain Write's packets less pion's sender reports
	out  [ownMTU]byte           // the sealed datagram
	hdr  rtcp.Header            // EncryptRTCP's parse (reused)
}

// rtcpErrorReasons label traverse_sfu_fast_rtcp_errors_total: the pair is
// over TCP, sealing failed, marshalling failed, the socket refused.
var rtcpErrorReasons = []string{"no-udp", "seal", "marshal", "write"}

// NewInterceptor implements interceptor.Factory: the interceptor to put
// first in the peer connection's registry.
func (o *rtcpOut) NewInterceptor(string) (interceptor.Interceptor, error) {
	return &rtcpOutBinder{o: o}, nil
}

// rtcpOutBinder takes pion's RTCP writer and makes rtcpOut the writer of
// the rest of the chain.
type rtcpOutBinder struct {
	interceptor.NoOp
	o *rtcpOut
}

func (b *rtcpOutBinder) BindRTCPWriter(w interceptor.RTCPWriter) interceptor.RTCPWriter {
	b.o.mu.Lock()
	b.o.pion = w
	b.o.mu.Unlock()
	return b.o
}

// enable makes ctx the session's SRTCP context: from now on every RTCP of
// the session is sealed by the node.
func (o *rtcpOut) enable(ctx *srtp.Context) {
	o.mu.Lock()
	o.ctx = ctx
	o.mu.Unlock()
}

// Write implements interceptor.RTCPWriter for the rest of the chain:
// pion's report.SenderInterceptor (and PeerConnection.WriteRTCP, which the
// node does not call). With the own context, pion's sender reports are
// dropped: every local stream of the session is then on the own data path,
// of which pion saw at most the packets written before the keys were
// known (counted by its report interceptor, then dropped by its SRTP), so
// its reports would repeat stale counts next to sendReports' own.
func (o *rtcpOut) Write(pkts []rtcp.Packet, a interceptor.Attributes) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ctx != nil {
		o.keep = o.keep[:0]
		for _, p := range pkts {
			if _, sr := p.(*rtcp.SenderReport); !sr {
				o.keep = append(o.keep, p)
			}
		}
		pkts = o.keep
		defer clear(o.keep)
		if len(pkts) == 0 {
			return 0, nil
		}
	}
	return o.writeLocked(pkts, a)
}

// send sends the node's own RTCP (sendReports, requestKeyframe): sealed
// with the own context, or through pion's writer while the session is on
// pion's path.
func (o *rtcpOut) send(pkts []rtcp.Packet) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, err := o.writeLocked(pkts, nil)
	return err
}

func (o *rtcpOut) writeLocked(pkts []rtcp.Packet, a interceptor.Attributes) (int, error) {
	if o.ctx == nil {
		if o.pion == nil {
			return 0, errRTCPNotBound
		}
		return o.pion.Write(pkts, a)
	}
	var err error
	if o.raw, err = rtpfeedback.AppendCompound(o.raw[:0], pkts); err != nil {
		o.f.s.m.ownRTCPErrors.WithLabelValues("marshal").Inc()
		return 0, err
	}
	return len(o.raw), o.sendLocked(o.raw)
}

// WriteCompound implements rtpfeedback.CompoundWriter: b is sealed and
// sent unless the session is on pion's path.
func (o *rtcpOut) WriteCompound(b []byte) (bool, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ctx == nil {
		return false, nil
	}
	return true, o.sendLocked(b)
}

// sendLocked seals the compound packet b and queues it on the node's
// socket to the client. o.mu is held.
func (o *rtcpOut) sendLocked(b []byte) error {
	m := o.f.s.m
	ap := o.f.remote.Load()
	if ap == nil || !ap.IsValid() {
		m.ownRTCPErrors.WithLabelValues("no-udp").Inc()
		return errNoUDPPair
	}
	out, err := o.ctx.EncryptRTCP(o.out[:0], b, &o.hdr)
	if err != nil || len(out) > len(o.out) {
		m.ownRTCPErrors.WithLabelValues("seal").Inc()
		if err == nil {
			err = errRTCPTooLong
		}
		return err
	}
	if _, err := o.f.s.out.WriteToAddrPort(out, *ap); err != nil {
		m.ownRTCPErrors.WithLabelValues("write").Inc()
		return err
	}
	m.ownRTCPSent.Inc()
	return nil
}

// writeRTCP sends pkts to the participant's client: through the session's
// own RTCP writer when it has one (which picks the path), else pion's.
func (p *participant) writeRTCP(pkts []rtcp.Packet) error {
	if f := p.own; f != nil && f.rtcp != nil {
		return f.rtcp.send(pkts)
	}
	pc := p.pc
	if p.own != nil {
		pc = p.own.pc.Load()
	}
	if pc == nil {
		return errRTCPNotBound
	}
	return pc.WriteRTCP(pkts)
}
