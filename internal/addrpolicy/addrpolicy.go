// Package addrpolicy decides which addresses an outside party may make a
// server send to: the TURN relay's peers, the SIP media proxy's outside
// media destinations. One deny list for every role, so a hole closed for
// one is closed for all.
package addrpolicy

import (
	"net"
	"net/netip"
)

// refusedByDefault are the ranges a server must not send to on an outside
// party's word unless the operator allows them: they are the operator's own
// network, not the internet a relay exists to reach.
var refusedByDefault = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),      // "this network", unspecified (RFC 1122)
	netip.MustParsePrefix("10.0.0.0/8"),     // private (RFC 1918)
	netip.MustParsePrefix("100.64.0.0/10"),  // carrier-grade NAT (RFC 6598)
	netip.MustParsePrefix("127.0.0.0/8"),    // loopback
	netip.MustParsePrefix("169.254.0.0/16"), // link-local, cloud metadata (169.254.169.254)
	netip.MustParsePrefix("172.16.0.0/12"),  // private (RFC 1918)
	netip.MustParsePrefix("192.0.0.0/24"),   // IETF protocol assignments (RFC 6890)
	netip.MustParsePrefix("192.168.0.0/16"), // private (RFC 1918)
	netip.MustParsePrefix("198.18.0.0/15"),  // benchmarking (RFC 2544)
	netip.MustParsePrefix("224.0.0.0/4"),    // multicast
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved and broadcast
	netip.MustParsePrefix("::/128"),         // unspecified
	netip.MustParsePrefix("::1/128"),        // loopback
	netip.MustParsePrefix("64:ff9b:1::/48"), // local-use NAT64 (RFC 8215)
	netip.MustParsePrefix("fc00::/7"),       // unique local (RFC 4193)
	netip.MustParsePrefix("fe80::/10"),      // link-local
	netip.MustParsePrefix("fec0::/10"),      // site-local (deprecated)
	netip.MustParsePrefix("ff00::/8"),       // multicast
	netip.MustParsePrefix("2001:db8::/32"),  // documentation
	netip.MustParsePrefix("2001:10::/28"),   // ORCHID
	netip.MustParsePrefix("100::/64"),       // discard-only
}

// Filter decides which addresses may be sent to. The zero Filter refuses
// the default ranges and allows the rest.
type Filter struct {
	Allow, Deny  []netip.Prefix   // operator's overrides: Deny first, then Allow
	Loopback     bool             // allow loopback (lab and local demo use)
	Own          []netip.Addr     // the server's own addresses: refused
	RelayIP      netip.Addr       // allowed although own: relay to relay
	OwnEndpoints []netip.AddrPort // the server's listeners: refused even on loopback
}

// AllowedIP reports whether ip may be sent to (for TURN, whether a
// permission for it may be installed: RFC 8656 section 9, 403 otherwise).
func (f *Filter) AllowedIP(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !ip.IsValid() {
		return false
	}
	if ip.Is6() {
		// NAT64, 6to4, Teredo, IPv4-compatible and IPv4-translated
		// addresses embed IPv4 addresses: judge the embedded one too.
		if v4, ok := embeddedV4(ip); ok {
			if !f.AllowedIP(v4) {
				return false
			}
		}
	}
	for _, p := range f.Deny {
		if p.Contains(ip) {
			return false
		}
	}
	for _, p := range f.Allow {
		if p.Contains(ip) {
			return true
		}
	}
	if ip.IsLoopback() {
		return f.Loopback
	}
	if f.isOwn(ip) {
		return false
	}
	for _, p := range refusedByDefault {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}

// AllowedEndpoint adds, to AllowedIP, the refusal of the server's own
// listeners: sending to them would loop.
func (f *Filter) AllowedEndpoint(ap netip.AddrPort) bool {
	ip := ap.Addr().Unmap()
	if !f.AllowedIP(ip) {
		return false
	}
	ap = netip.AddrPortFrom(ip, ap.Port())
	for _, e := range f.OwnEndpoints {
		if e == ap || (e.Addr().IsUnspecified() && e.Port() == ap.Port() && (ip.IsLoopback() || f.isOwn(ip))) {
			return false
		}
	}
	return true
}

func (f *Filter) isOwn(ip netip.Addr) bool {
	if ip == f.RelayIP {
		return false
	}
	for _, a := range f.Own {
		if a == ip {
			return true
		}
	}
	return false
}

// embeddedV4 returns the IPv4 address inside NAT64 (64:ff9b::/96, RFC
// 6052), 6to4 (2002::/16), Teredo (2001::/32, client address inverted),
// IPv4-compatible (::/96, deprecated by RFC 4291 section 2.5.5.1; ::7f00:1
// is 127.0.0.1 to any stack that still honours it) and IPv4-translated
// (::ffff:0:0:0/96, RFC 2765) addresses. IPv4-mapped addresses
// (::ffff:0:0/96) are unmapped before this is asked.
func embeddedV4(ip netip.Addr) (netip.Addr, bool) {
	b := ip.As16()
	last := netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	switch {
	case b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && isZero(b[4:12]):
		return last, true
	case b[0] == 0x20 && b[1] == 0x02:
		return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}), true
	case b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && b[3] == 0:
		return netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]}), true
	case isZero(b[:15]) && b[15] <= 1:
		return netip.Addr{}, false // :: and ::1 are IPv6's own
	case isZero(b[:12]):
		return last, true
	case isZero(b[:8]) && b[8] == 0xff && b[9] == 0xff && b[10] == 0 && b[11] == 0:
		return last, true
	}
	return netip.Addr{}, false
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// HostAddrs returns the addresses a listener on la answers on: la itself, or
// every interface address when la is unspecified.
func HostAddrs(la netip.Addr) []netip.Addr {
	la = la.Unmap()
	if !la.IsUnspecified() {
		return []netip.Addr{la}
	}
	var own []netip.Addr
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				own = append(own, p.Addr().Unmap())
			}
		}
	}
	return own
}
