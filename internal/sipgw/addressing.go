package sipgw

import (
	"net/netip"
	"strings"

	"github.com/emiago/sipgo/sip"
)

func (g *Gateway) isInside(src netip.AddrPort) bool {
	if src == g.upstream {
		return true
	}
	for _, p := range g.cfg.InsideNets {
		if p.Contains(src.Addr()) {
			return true
		}
	}
	return false
}

func source(m interface{ Source() string }) netip.AddrPort {
	ap, err := netip.ParseAddrPort(m.Source())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// valid checks the headers a proxy needs (RFC 3261 section 16.3).
func valid(req *sip.Request) bool {
	return req.CallID() != nil && req.From() != nil && req.To() != nil && req.CSeq() != nil && req.Via() != nil
}

func toTag(req *sip.Request) string { return toTagOf(req) }

// removeOwnRoutes pops the Route entries that name the gateway (RFC 3261
// section 16.4).
func (g *Gateway) removeOwnRoutes(req *sip.Request) {
	for {
		r := req.Route()
		if r == nil || !g.isMe(r.Address) {
			return
		}
		req.RemoveHeader("Route")
	}
}

func (g *Gateway) isMe(u sip.Uri) bool {
	port := u.Port
	if port == 0 {
		port = 5060
	}
	return (port == int(g.addr.Port()) || (g.tlsLn != nil && port == int(g.TLSAddr().Port()))) &&
		(u.Host == g.host || u.Host == g.addr.Addr().String() || u.Host == g.outIP.String())
}

type headerGetter interface{ GetHeader(string) sip.Header }

func isSDP(m headerGetter) bool {
	ct := m.GetHeader("Content-Type")
	return ct == nil || strings.HasPrefix(strings.ToLower(strings.TrimSpace(ct.Value())), "application/sdp")
}
