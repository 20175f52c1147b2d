package netlab

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// AddPublicAddr gives the NAT a second outside address a (on its eth0) and
// makes the network it sits on route a to it. Router daemons that refuse to
// map ports on a documentation or private address (miniupnpd checks its
// external address against RFC 6890's reserved blocks, and the lab's
// internet is 203.0.113.0/24) need one: give them a and declare it as
// their external address. Nothing in the lab leads out, so a is reachable
// only from inside the lab. The NAT's own translation keeps its first
// address.
func (n *NAT) AddPublicAddr(a netip.Addr) error {
	if !a.Is4() {
		return fmt.Errorf("netlab: public address %v: want IPv4", a)
	}
	if n.link == nil || n.link.gw == nil || n.nl == nil {
		return fmt.Errorf("netlab: nat %s has no outside link", n.name)
	}
	eth0, err := n.nl.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("netlab: nat %s: %w", n.name, err)
	}
	if err := n.nl.AddrAdd(eth0, nlAddr(netip.PrefixFrom(a, 32))); err != nil {
		return fmt.Errorf("netlab: nat %s: address %v: %w", n.name, a, err)
	}
	err = n.link.gw.nl.RouteAdd(&netlink.Route{Dst: nlAddr(netip.PrefixFrom(a, 32)).IPNet, Gw: n.Addr().AsSlice()})
	if err != nil {
		return fmt.Errorf("netlab: route %v via %s in %s: %w", a, n.name, n.link.gw.name, err)
	}
	return nil
}
