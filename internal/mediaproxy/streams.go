package mediaproxy

import (
	"net"
	"net/netip"
	"sync/atomic"
)

// stream is one media stream (one SSRC, one inside port pair).
type stream struct {
	callID        string
	index         uint8
	kind          Kind
	callerOutside bool
	insidePort    uint16
	rtpConn       *net.UDPConn
	rtcpConn      *net.UDPConn
	rtpFD, rtcpFD int // raw descriptors registered with the poller (Linux)
	created       int64

	route atomic.Pointer[route] // replaced whole under p.mu

	ssrc      uint32   // p.mu
	ssrcKnown bool     // p.mu
	aliases   []uint32 // p.mu: further SSRCs seen from the latched source

	last               atomic.Int64
	toServer, toClient atomic.Uint64 // user-space RTP packets
	offload            atomic.Uint32 // offloadNone, offloadQueued, offloadDone, offloadFailed
	flow               Flow          // set before offload becomes offloadDone
	kernelPkts         atomic.Uint64
	gone               atomic.Bool
}

// maxAliases bounds the extra SSRCs one stream accepts from its latched
// source.
const maxAliases = 4

const (
	offloadNone uint32 = iota
	offloadQueued
	offloadDone
	offloadFailed
)

// route is a stream's addresses; the readers load it without locks.
type route struct {
	client, clientRTCP       netip.AddrPort // signaled in SDP
	clientSrc, clientRTCPSrc netip.AddrPort // latched sources (zero until latched)
	// clientRTCPDst is where RTCP goes once RTP latched but RTCP has not:
	// the latched IP with the signaled RTCP port (checked).
	clientRTCPDst      netip.AddrPort
	server, serverRTCP netip.AddrPort
	serverSrc          netip.AddrPort // observed source of the server's RTP
}

func rtcpOf(rtp, rtcp netip.AddrPort) netip.AddrPort {
	if rtcp.IsValid() || !rtp.IsValid() {
		return rtcp
	}
	return netip.AddrPortFrom(rtp.Addr(), rtp.Port()+1)
}

// endpoints are a descriptor's addresses once checked: those the policy
// refuses are left out, as if not known, so the stream keeps what it had
// (a rejected re-INVITE changes nothing).
type endpoints struct {
	client, clientRTCP netip.AddrPort
	server, serverRTCP netip.AddrPort
}

func (p *Proxy) checkedEndpoints(d *Descriptor) endpoints {
	e := endpoints{d.Client, d.ClientRTCP, d.Server, d.ServerRTCP}
	if e.client.IsValid() && p.CheckOutside(e.client) != nil {
		e.client, e.clientRTCP = netip.AddrPort{}, netip.AddrPort{}
	}
	if e.clientRTCP.IsValid() && p.CheckOutside(e.clientRTCP) != nil {
		e.clientRTCP = netip.AddrPort{}
	}
	for _, a := range []netip.AddrPort{e.server, rtcpOf(e.server, e.serverRTCP)} {
		if e.server.IsValid() && p.checkInside(a) != nil {
			p.c.RefusedOwn.Add(1)
			e.server, e.serverRTCP = netip.AddrPort{}, netip.AddrPort{}
		}
	}
	return e
}

func (p *Proxy) upsert(d *Descriptor) (Reply, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return Reply{}, ErrClosed
	}
	s := p.calls[d.CallID][d.Index]
	isNew := s == nil
	if isNew {
		var err error
		if s, err = p.newStreamLocked(d); err != nil {
			p.mu.Unlock()
			return Reply{}, err
		}
	}
	old := s.route.Load()
	r, reoffload := p.repoint(*old, p.checkedEndpoints(d))
	s.route.Store(&r)
	if old.clientSrc.IsValid() && !r.clientSrc.IsValid() && p.bySrc[old.clientSrc] == s {
		delete(p.bySrc, old.clientSrc)
	}
	if d.Flags&FlagSSRC != 0 && (!s.ssrcKnown || s.ssrc != d.SSRC) {
		p.unindexLocked(s)
		s.ssrc, s.ssrcKnown = d.SSRC, true
		p.indexLocked(s)
	} else if isNew || !old.client.IsValid() || old.client.Addr() != r.client.Addr() {
		p.unindexLocked(s)
		p.indexLocked(s)
	}
	rep := p.replyLocked(s)
	p.mu.Unlock()
	if isNew {
		p.startInside(s)
	}
	if reoffload && s.offload.Load() == offloadDone && p.cfg.Offloader != nil {
		if err := p.cfg.Offloader.Remove(s.flow); err != nil {
			p.log.Warn("remove kernel flow", "call", s.callID, "err", err)
		}
		s.toServer.Store(0)
		s.toClient.Store(0)
		s.offload.Store(offloadNone)
	}
	return rep, nil
}

// newStreamLocked allocates an inside port pair for the descriptor's
// stream and files it under its call.
func (p *Proxy) newStreamLocked(d *Descriptor) (*stream, error) {
	a, b, port, err := p.pool.alloc()
	if err != nil {
		return nil, err
	}
	now := p.now.Load()
	s := &stream{
		callID: d.CallID, index: d.Index, kind: d.Kind, callerOutside: d.CallerOutside(),
		insidePort: port, rtpConn: a, rtcpConn: b, created: now, rtpFD: fdOf(a), rtcpFD: fdOf(b),
	}
	s.last.Store(now)
	s.route.Store(&route{})
	c := p.calls[d.CallID]
	if c == nil {
		c = map[uint8]*stream{}
		p.calls[d.CallID] = c
	}
	c[d.Index] = s
	return s, nil
}

// repoint returns r aimed at the checked endpoints e (a zero address keeps
// what r had), and whether a kernel flow must be taken back because a side
// moved.
func (p *Proxy) repoint(r route, e endpoints) (route, bool) {
	var reoffload bool
	if e.client.IsValid() && (e.client != r.client || rtcpOf(e.client, e.clientRTCP) != r.clientRTCP) {
		if r.client.IsValid() && e.client != r.client {
			// The client moved (a re-INVITE or UPDATE): latch afresh, and
			// send it nothing until its media comes from the new place.
			r.clientSrc, r.clientRTCPSrc, r.clientRTCPDst = netip.AddrPort{}, netip.AddrPort{}, netip.AddrPort{}
			reoffload = true
		}
		r.client, r.clientRTCP = e.client, rtcpOf(e.client, e.clientRTCP)
		if r.clientSrc.IsValid() {
			r.clientRTCPDst = p.rtcpDst(r.clientSrc, r.clientRTCP)
		}
	}
	if e.server.IsValid() && (e.server != r.server || rtcpOf(e.server, e.serverRTCP) != r.serverRTCP) {
		if r.server.IsValid() {
			r.serverSrc = netip.AddrPort{}
			reoffload = true
		}
		r.server, r.serverRTCP = e.server, rtcpOf(e.server, e.serverRTCP)
	}
	return r, reoffload
}

// rtcpDst is where RTCP goes once RTP latched from src but RTCP has not:
// src's IP with the signaled RTCP port, if the policy allows it.
func (p *Proxy) rtcpDst(src, clientRTCP netip.AddrPort) netip.AddrPort {
	if !clientRTCP.IsValid() {
		return netip.AddrPort{}
	}
	if d := netip.AddrPortFrom(src.Addr(), clientRTCP.Port()); p.checkOutside(d) == nil {
		return d
	}
	return netip.AddrPort{}
}

// indexLocked files s under its SSRC, or under its client IP while it waits
// for a latch.
func (p *Proxy) indexLocked(s *stream) {
	if s.ssrcKnown {
		p.bySSRC[s.ssrc] = append(p.bySSRC[s.ssrc], s)
		for _, a := range s.aliases {
			p.bySSRC[a] = append(p.bySSRC[a], s)
		}
		if src := s.route.Load().clientSrc; src.IsValid() {
			p.bySrc[src] = s
		}
		return
	}
	if c := s.route.Load().client; c.IsValid() {
		p.awaiting[c.Addr()] = append(p.awaiting[c.Addr()], s)
	}
}

func (p *Proxy) unindexLocked(s *stream) {
	if s.ssrcKnown {
		p.unfileLocked(s.ssrc, s)
		for _, x := range s.aliases {
			p.unfileLocked(x, s)
		}
		if src := s.route.Load().clientSrc; src.IsValid() && p.bySrc[src] == s {
			delete(p.bySrc, src)
		}
		return
	}
	for a, l := range p.awaiting {
		if l2 := without(l, s); len(l2) != len(l) {
			if len(l2) == 0 {
				delete(p.awaiting, a)
			} else {
				p.awaiting[a] = l2
			}
		}
	}
}

// unfileLocked removes s from the streams of one SSRC.
func (p *Proxy) unfileLocked(ssrc uint32, s *stream) {
	if l := without(p.bySSRC[ssrc], s); len(l) > 0 {
		p.bySSRC[ssrc] = l
	} else {
		delete(p.bySSRC, ssrc)
	}
}

func without(l []*stream, s *stream) []*stream {
	for i, x := range l {
		if x == s {
			return append(l[:i:i], l[i+1:]...)
		}
	}
	return l
}

// DeleteCall removes every stream of the call. Deleting an unknown call
// returns ErrNoSession.
func (p *Proxy) DeleteCall(callID string) error {
	p.mu.Lock()
	c := p.calls[callID]
	delete(p.calls, callID)
	for _, s := range c {
		p.unindexLocked(s)
	}
	p.mu.Unlock()
	if c == nil {
		return ErrNoSession
	}
	for _, s := range c {
		p.release(s)
	}
	return nil
}

func (p *Proxy) deleteStream(callID string, index uint8) error {
	p.mu.Lock()
	s := p.calls[callID][index]
	if s != nil {
		p.unindexLocked(s)
		delete(p.calls[callID], index)
		if len(p.calls[callID]) == 0 {
			delete(p.calls, callID)
		}
	}
	p.mu.Unlock()
	if s == nil {
		return ErrNoSession
	}
	p.release(s)
	return nil
}

// release frees what a removed stream holds. Its readers end on the
// closed sockets.
func (p *Proxy) release(s *stream) {
	if !s.gone.CompareAndSwap(false, true) {
		return
	}
	if s.offload.Load() == offloadDone && p.cfg.Offloader != nil {
		if err := p.cfg.Offloader.Remove(s.flow); err != nil {
			p.log.Warn("remove kernel flow", "call", s.callID, "err", err)
		}
	}
	p.stopInside(s)
	s.rtpConn.Close()
	s.rtcpConn.Close()
	p.pool.release(s.insidePort)
}
