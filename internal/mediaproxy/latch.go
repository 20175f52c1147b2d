package mediaproxy

import "net/netip"

// lookupLocked finds the stream of an outside packet: the SSRC selects
// the candidates and the source address (the leg's latched source) picks
// among them.
func (p *Proxy) lookupLocked(ssrc uint32, src netip.AddrPort, l *leg) *stream {
	for _, s := range p.bySSRC[ssrc] {
		if l.clientSrc(s.route.Load()) == src {
			return s
		}
	}
	return nil
}

// latch binds an unknown (SSRC, source) pair to a stream if the rules of
// the package documentation allow it, and returns the stream or nil.
func (p *Proxy) latch(ssrc uint32, src netip.AddrPort, l *leg) *stream {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.lookupLocked(ssrc, src, l); s != nil {
		return s // another reader latched it meanwhile
	}
	// The source becomes the stream's destination: it passes the same
	// policy as a signaled address (a packet "from" one of the proxy's own
	// sockets, or from an address the policy refuses, never latches).
	if err := p.checkOutside(src); err != nil {
		p.c.DropRefusedSource.Add(1)
		return nil
	}
	if l.rtcp {
		return p.latchRTCPLocked(ssrc, src)
	}
	// A new SSRC from a source already latched to a stream (a sender that
	// restarts its SSRC, or plays DTMF from another SSRC) joins that stream:
	// the source address:port already proves whose packet it is.
	if s := p.bySrc[src]; s != nil && s.ssrcKnown {
		p.aliasLocked(s, ssrc)
		return s
	}
	if s := p.declaredLocked(ssrc, src); s != nil {
		p.setSourceLocked(s, src)
		return s
	}
	s := p.awaitingLocked(src)
	if s == nil {
		return nil
	}
	p.unindexLocked(s)
	s.ssrc, s.ssrcKnown = ssrc, true
	p.indexLocked(s)
	p.setSourceLocked(s, src)
	p.c.Latched.Add(1)
	return s
}

// latchRTCPLocked latches RTCP to a stream whose RTP already latched from
// the same IP (RTCP cannot teach an SSRC).
func (p *Proxy) latchRTCPLocked(ssrc uint32, src netip.AddrPort) *stream {
	for _, s := range p.bySSRC[ssrc] {
		r := s.route.Load()
		if !r.clientRTCPSrc.IsValid() && r.clientSrc.IsValid() && r.clientSrc.Addr() == src.Addr() {
			r2 := *r
			r2.clientRTCPSrc = src
			s.route.Store(&r2)
			return s
		}
	}
	return nil
}

// aliasLocked files a further SSRC under s, forgetting the oldest beyond
// maxAliases.
func (p *Proxy) aliasLocked(s *stream, ssrc uint32) {
	if len(s.aliases) >= maxAliases {
		p.unfileLocked(s.aliases[0], s)
		s.aliases = s.aliases[1:]
	}
	s.aliases = append(s.aliases, ssrc)
	p.bySSRC[ssrc] = append(p.bySSRC[ssrc], s)
	p.c.SSRCChanges.Add(1)
}

// declaredLocked picks the stream a declared (or already learnt) SSRC not
// yet latched belongs to: signaled IP only, the signaled port first.
func (p *Proxy) declaredLocked(ssrc uint32, src netip.AddrPort) *stream {
	var best *stream
	for _, s := range p.bySSRC[ssrc] {
		r := s.route.Load()
		if r.clientSrc.IsValid() || r.client.Addr() != src.Addr() {
			continue
		}
		if r.client == src {
			return s
		}
		if best == nil {
			best = s
		}
	}
	return best
}

// awaitingLocked picks the stream without a declared SSRC waiting at the
// source's IP that learns it: the one signaled with the source's port,
// else the oldest.
func (p *Proxy) awaitingLocked(src netip.AddrPort) *stream {
	l := p.awaiting[src.Addr()]
	for _, s := range l {
		if s.route.Load().client == src {
			return s
		}
	}
	if len(l) > 0 {
		return l[0]
	}
	return nil
}

// setSourceLocked latches s's RTP to src, and aims its RTCP at the same IP
// with the signaled RTCP port (checked) until RTCP latches too.
func (p *Proxy) setSourceLocked(s *stream, src netip.AddrPort) {
	r := *s.route.Load()
	if r.clientSrc.IsValid() && p.bySrc[r.clientSrc] == s {
		delete(p.bySrc, r.clientSrc)
	}
	r.clientSrc = src
	p.bySrc[src] = s
	r.clientRTCPDst = p.rtcpDst(src, r.clientRTCP)
	s.route.Store(&r)
}
