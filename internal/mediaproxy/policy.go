package mediaproxy

import (
	"net/netip"
	"slices"

	"github.com/traverse-rtc/traverse/internal/addrpolicy"
)

// The destination policy. An outside party names its media addresses in
// SDP (c=, a=rtcp, in offers, answers and every later re-INVITE or
// UPDATE), and a proxy that sends wherever SDP says is a reflector: for a
// stranger's traffic toward the operator's own network (loopback,
// RFC 1918, cloud metadata at 169.254.169.254, CGNAT), and for a loop when
// the address is one of the proxy's own sockets (an echoing server turned
// 5 packets into ~230,000 forwards each way in 3 s). So:
//
//   - every outside address a descriptor names passes Config.Policy (the
//     deny list every traverse role shares, internal/addrpolicy) and is
//     not one of the proxy's own sockets; a refused one is not stored and
//     is counted (refused_total);
//   - nothing is sent to an outside party before its own media arrived
//     from a plausible address (the latch): the signaled address only says
//     where to expect media from, never where to send it (symmetric RTP,
//     RFC 4961; rtpengine's strict-source with its latch). The latched
//     source itself passes the same check;
//   - an inside address naming one of the proxy's own sockets is refused
//     too: the server's SDP can loop the proxy as surely as a client's.

// ownState is what the policy check reads: the operator's filter with the
// proxy's own addresses added, and every socket of the process that media
// must never be sent to. Replaced whole (AddOwnEndpoints).
type ownState struct {
	filter addrpolicy.Filter
	// sockets are the fixed ports and the endpoints AddOwnEndpoints adds
	// (the gateway's SIP listeners, the control port); an unspecified
	// address matches the port on every own or loopback address.
	sockets []netip.AddrPort
}

// newOwnState builds the policy state of a proxy bound to rtp and rtcp.
func newOwnState(cfg *Config, rtp, rtcp netip.AddrPort) *ownState {
	f := cfg.Policy
	f.Own = slices.Clone(f.Own)
	for _, a := range []netip.Addr{rtp.Addr(), rtcp.Addr(), cfg.InsideIP} {
		for _, h := range addrpolicy.HostAddrs(a) {
			if !slices.Contains(f.Own, h) {
				f.Own = append(f.Own, h)
			}
		}
	}
	return &ownState{filter: f, sockets: []netip.AddrPort{rtp, rtcp}}
}

// AddOwnEndpoints adds sockets of the process (the signaling listeners, a
// control port) that media must never be sent to, whatever the policy
// allows. The gateway adds its SIP listeners.
func (p *Proxy) AddOwnEndpoints(eps ...netip.AddrPort) {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.own.Load()
	n := &ownState{filter: old.filter, sockets: slices.Clone(old.sockets)}
	for _, e := range eps {
		e = netip.AddrPortFrom(e.Addr().Unmap(), e.Port())
		if e.IsValid() && !slices.Contains(n.sockets, e) {
			n.sockets = append(n.sockets, e)
		}
	}
	p.own.Store(n)
}

// CheckOutside reports whether media may be sent to ap, an address an
// outside party named or sent from: nil, ErrOwnAddress (one of the
// process's own sockets or the inside pool) or ErrRefusedAddress (the
// policy refuses it). Each refusal is counted by reason.
func (p *Proxy) CheckOutside(ap netip.AddrPort) error {
	err := p.checkOutside(ap)
	p.countRefusal(err)
	return err
}

func (p *Proxy) checkOutside(ap netip.AddrPort) error {
	ip := ap.Addr().Unmap()
	ap = netip.AddrPortFrom(ip, ap.Port())
	st := p.own.Load()
	if ap.Port() == 0 || !ip.IsValid() {
		return ErrRefusedAddress
	}
	if st.ownSocket(ap) || p.inPool(ap) {
		return ErrOwnAddress
	}
	if !st.filter.AllowedIP(ip) {
		return ErrRefusedAddress
	}
	return nil
}

// checkInside reports whether inside media may be sent to ap, an address
// the inside server named: only the proxy's own sockets are refused (the
// inside network is the operator's).
func (p *Proxy) checkInside(ap netip.AddrPort) error {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if p.own.Load().ownSocket(ap) || p.inPool(ap) {
		return ErrOwnAddress
	}
	return nil
}

func (p *Proxy) countRefusal(err error) {
	switch err {
	case nil:
	case ErrOwnAddress:
		p.c.RefusedOwn.Add(1)
	default:
		p.c.RefusedPolicy.Add(1)
	}
}

// ownSocket reports whether ap is one of the listed sockets.
func (st *ownState) ownSocket(ap netip.AddrPort) bool {
	for _, e := range st.sockets {
		if e.Port() != ap.Port() {
			continue
		}
		if e.Addr() == ap.Addr() {
			return true
		}
		if e.Addr().IsUnspecified() && (ap.Addr().IsLoopback() || ap.Addr().IsUnspecified() || slices.Contains(st.filter.Own, ap.Addr())) {
			return true
		}
	}
	return false
}

// inPool reports whether ap is an inside port pair the proxy holds now.
// (Not the whole range: the server's own ports may lie in it, and a
// client on the inside IP's host may hold ports there.)
func (p *Proxy) inPool(ap netip.AddrPort) bool {
	in := p.cfg.InsideIP.Unmap()
	a := ap.Addr()
	if a != in && !(in.IsUnspecified() && (a.IsLoopback() || a.IsUnspecified() || slices.Contains(p.own.Load().filter.Own, a))) {
		return false
	}
	return p.pool.held(ap.Port())
}
