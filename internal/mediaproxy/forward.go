package mediaproxy

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

// leg is one of the two flows every stream has, RTP or RTCP: the fixed
// outside socket that carries it for every call, which of a stream's
// sockets and addresses belong to it, and its counters. The proxy has
// exactly two (Proxy.rtpLeg and Proxy.rtcpLeg); the forwarding functions
// take one instead of an "rtcp bool".
type leg struct {
	rtcp    bool
	fixed   *udpio.Conn
	in, out *atomic.Uint64 // Counters.RTPIn and RTPOut, or RTCPIn and RTCPOut
}

func newLegs(p *Proxy) (rtp, rtcp leg) {
	return leg{fixed: p.rtp, in: &p.c.RTPIn, out: &p.c.RTPOut},
		leg{rtcp: true, fixed: p.rtcp, in: &p.c.RTCPIn, out: &p.c.RTCPOut}
}

// leg returns the RTP or the RTCP leg (for the inside readers, which keep
// a flag per socket).
func (p *Proxy) leg(rtcp bool) *leg {
	if rtcp {
		return &p.rtcpLeg
	}
	return &p.rtpLeg
}

// ssrc reads the packet's SSRC: RTP's (RFC 3550 section 5.1) or RTCP's
// sender SSRC (section 6.4).
func (l *leg) ssrc(b []byte) (uint32, error) {
	if l.rtcp {
		return RTCPSenderSSRC(b)
	}
	return RTPSSRC(b)
}

// conn is the stream's inside socket of this leg.
func (l *leg) conn(s *stream) *net.UDPConn {
	if l.rtcp {
		return s.rtcpConn
	}
	return s.rtpConn
}

// clientSrc is the latched outside source of this leg (zero until latched).
func (l *leg) clientSrc(r *route) netip.AddrPort {
	if l.rtcp {
		return r.clientRTCPSrc
	}
	return r.clientSrc
}

// server is where this leg's packets go inside.
func (l *leg) server(r *route) netip.AddrPort {
	if l.rtcp {
		return r.serverRTCP
	}
	return r.server
}

// outsideLoop reads one fixed port in batches and forwards each packet to
// its stream's inside port.
func (p *Proxy) outsideLoop(l *leg) {
	defer p.wg.Done()
	msgs := udpio.NewMessages(udpio.DefaultBatch, 0)
	var raw *rawSender
	if !l.rtcp && p.raw != nil {
		raw = p.raw
		defer raw.close()
	}
	sent := func(s *stream, n int) { p.sentToServer(s, l, n, p.now.Load()) }
	for {
		n, err := l.fixed.ReadBatch(msgs)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		now := p.now.Load()
		for i := range msgs[:n] {
			m := &msgs[i]
			s, dst, ok := p.demuxOutside(m, l)
			if !ok {
				continue
			}
			if raw != nil && raw.add(s, m.Payload(), netip.AddrPortFrom(p.cfg.InsideIP, s.insidePort), dst) {
				continue
			}
			p.sendToServer(s, l, m.Payload(), dst, now)
		}
		if raw != nil {
			if failed := raw.flush(sent); failed > 0 {
				p.c.DropWriteError.Add(uint64(failed))
			}
		}
	}
}

// fromOutside forwards one packet from a fixed port with sendto (the
// batched loop uses the raw sender for RTP where it can).
func (p *Proxy) fromOutside(m *udpio.Message, l *leg, now int64) {
	if s, dst, ok := p.demuxOutside(m, l); ok {
		p.sendToServer(s, l, m.Payload(), dst, now)
	}
}

// demuxOutside finds the stream of a packet from a fixed port (SSRC, then
// source address, latching when the rules allow) and where it goes inside.
func (p *Proxy) demuxOutside(m *udpio.Message, l *leg) (*stream, netip.AddrPort, bool) {
	ssrc, err := l.ssrc(m.Payload())
	if err != nil {
		p.c.DropMalformed.Add(1)
		return nil, netip.AddrPort{}, false
	}
	p.mu.RLock()
	s := p.lookupLocked(ssrc, m.Addr, l)
	p.mu.RUnlock()
	if s == nil {
		if s = p.latch(ssrc, m.Addr, l); s == nil {
			p.c.DropUnknownSSRC.Add(1)
			return nil, netip.AddrPort{}, false
		}
	}
	dst := l.server(s.route.Load())
	if !dst.IsValid() {
		p.c.DropNoPeer.Add(1)
		return nil, netip.AddrPort{}, false
	}
	return s, dst, true
}

func (p *Proxy) sendToServer(s *stream, l *leg, b []byte, dst netip.AddrPort, now int64) {
	if _, err := l.conn(s).WriteToUDPAddrPort(b, dst); err != nil {
		p.c.DropWriteError.Add(1)
		return
	}
	p.sentToServer(s, l, len(b), now)
}

// sentToServer accounts a packet sent from an inside port.
func (p *Proxy) sentToServer(s *stream, l *leg, n int, now int64) {
	s.last.Store(now)
	p.c.BytesIn.Add(uint64(n))
	l.in.Add(1)
	if !l.rtcp && s.toServer.Add(1) >= p.cfg.OffloadAfter {
		p.maybeOffload(s)
	}
}

// fromInside checks a packet from the server on one of s's inside ports and
// returns where it goes outside. The inside readers (inside_*.go) keep a
// flag per socket, hence the bool.
func (p *Proxy) fromInside(s *stream, rtcp bool, src netip.AddrPort) (netip.AddrPort, bool) {
	r := s.route.Load()
	if r.server.IsValid() && src.Addr() != r.server.Addr() {
		p.c.DropNotServer.Add(1)
		return netip.AddrPort{}, false
	}
	if !rtcp && !r.serverSrc.IsValid() {
		p.mu.Lock()
		r2 := *s.route.Load()
		r2.serverSrc = src
		s.route.Store(&r2)
		p.mu.Unlock()
		r = &r2
	}
	if dst, ok := r.toClient(rtcp, p.cfg.SendBeforeLatch); ok {
		return dst, true
	}
	if r.client.IsValid() {
		p.c.DropNotLatched.Add(1)
	} else {
		p.c.DropNoPeer.Add(1)
	}
	return netip.AddrPort{}, false
}

// toClient is where a packet of the server goes outside: only to where the
// client's own media came from (see policy.go), or, with sendBeforeLatch,
// to its signaled address.
func (r *route) toClient(rtcp, sendBeforeLatch bool) (netip.AddrPort, bool) {
	dst := r.clientSrc
	if rtcp {
		dst = r.clientRTCPSrc
		if !dst.IsValid() {
			dst = r.clientRTCPDst
		}
	}
	if !dst.IsValid() && sendBeforeLatch {
		dst = r.client
		if rtcp {
			dst = r.clientRTCP
		}
	}
	return dst, dst.IsValid()
}

// sentToClient accounts a packet sent out of the fixed port (rtcp: see
// fromInside).
func (p *Proxy) sentToClient(s *stream, rtcp bool, n int) {
	s.last.Store(p.now.Load())
	p.c.BytesOut.Add(uint64(n))
	p.leg(rtcp).out.Add(1)
	if !rtcp && s.toClient.Add(1) >= p.cfg.OffloadAfter {
		p.maybeOffload(s)
	}
}
