package mediaproxy

import (
	"net/netip"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

// Flow is one latched media flow, as the kernel sees it: the outside client
// sends from Client to the fixed port Fixed; the proxy forwards from its
// inside port Inside to the server's Server; the server answers from
// ServerSrc (usually Server itself) to Inside, and the proxy forwards from
// Fixed back to Client. Once latched, the 5-tuples identify the flow, so
// the kernel needs no SSRC demultiplexing.
type Flow struct {
	Client    netip.AddrPort
	Fixed     netip.AddrPort
	Inside    netip.AddrPort
	Server    netip.AddrPort
	ServerSrc netip.AddrPort
}

// Offloader moves latched flows into a kernel fast path and back. It has
// two owners: nftables rules (package mediaproxy/nftoffload) and an eBPF
// tc program (package kfast/mediaflow). Implementations are safe for
// concurrent use.
type Offloader interface {
	// Offload installs forwarding for both directions of flow.
	Offload(flow Flow) error
	// Remove uninstalls it; removing an unknown flow is not an error.
	Remove(flow Flow) error
	// Stats returns the packets and bytes the kernel forwarded for flow,
	// both directions together.
	Stats(flow Flow) (packets, bytes uint64, err error)
}

func (p *Proxy) maybeOffload(s *stream) {
	if p.cfg.Offloader == nil || s.offload.Load() != offloadNone ||
		s.toServer.Load() < p.cfg.OffloadAfter || s.toClient.Load() < p.cfg.OffloadAfter {
		return
	}
	r := s.route.Load()
	if !r.clientSrc.IsValid() || !r.serverSrc.IsValid() || !r.server.IsValid() {
		return
	}
	if !s.offload.CompareAndSwap(offloadNone, offloadQueued) {
		return
	}
	select {
	case p.offloadq <- s:
	default:
		s.offload.Store(offloadNone)
	}
}

func (p *Proxy) offloadWorker() {
	defer p.wg.Done()
	for {
		select {
		case <-p.done:
			return
		case s := <-p.offloadq:
			if s.gone.Load() {
				continue
			}
			r := s.route.Load()
			f := Flow{
				Client: r.clientSrc, Fixed: p.fixedFor(p.rtp),
				Inside: netip.AddrPortFrom(p.cfg.InsideIP, s.insidePort),
				Server: r.server, ServerSrc: r.serverSrc,
			}
			if err := p.cfg.Offloader.Offload(f); err != nil {
				s.offload.Store(offloadFailed)
				p.c.OffloadErrors.Add(1)
				p.log.Warn("kernel offload failed; the flow stays in user space", "call", s.callID, "err", err)
				continue
			}
			s.flow = f
			s.offload.Store(offloadDone)
			p.c.Offloads.Add(1)
			if s.gone.Load() {
				_ = p.cfg.Offloader.Remove(f)
			}
		}
	}
}

func (p *Proxy) fixedFor(c *udpio.Conn) netip.AddrPort {
	a := c.LocalAddr()
	if a.Addr().IsUnspecified() && p.cfg.RTP.Addr().IsValid() {
		return netip.AddrPortFrom(p.cfg.RTP.Addr(), a.Port())
	}
	return a
}
