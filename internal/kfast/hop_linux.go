//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package kfast

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Hop is a Route with the Ethernet addresses a packet leaves with, for
// programs that send copies with bpf_clone_redirect, which
// neither routes nor resolves neighbours: Dst is the next hop's, Src the
// interface's (both zero for a local address, sent through lo).
type Hop struct {
	Route
	Dst, Src [6]byte
}

// Hop returns the route to dst and the neighbour entry of its next hop
// (the gateway, or dst itself on a link). Without a usable neighbour entry
// (none yet, or failed) it is ErrNoRoute: the user-space path sends
// meanwhile, which resolves it.
func (l *Loader) Hop(dst netip.Addr) (Hop, error) {
	r, err := lookup(l.nl, dst)
	if err != nil || r.Local {
		return Hop{Route: r}, err
	}
	routes, err := l.nl.RouteGet(dst.AsSlice())
	if err != nil || len(routes) == 0 {
		return Hop{}, fmt.Errorf("%w: route to %v: %w", ErrNoRoute, dst, err)
	}
	next := dst
	if g, ok := netip.AddrFromSlice(routes[0].Gw); ok && g.IsValid() && !g.IsUnspecified() {
		next = g.Unmap()
	}
	link, err := l.nl.LinkByIndex(r.Ifindex)
	if err != nil {
		return Hop{}, fmt.Errorf("%w: link %d: %w", ErrNoRoute, r.Ifindex, err)
	}
	neighs, err := l.nl.NeighList(r.Ifindex, unix.AF_INET)
	if err != nil {
		return Hop{}, fmt.Errorf("%w: neighbours of %d: %w", ErrNoRoute, r.Ifindex, err)
	}
	const usable = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE | netlink.NUD_PERMANENT
	for _, n := range neighs {
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || ip.Unmap() != next || len(n.HardwareAddr) != 6 || n.State&usable == 0 {
			continue
		}
		h := Hop{Route: r}
		copy(h.Dst[:], n.HardwareAddr)
		copy(h.Src[:], link.Attrs().HardwareAddr)
		return h, nil
	}
	return Hop{}, fmt.Errorf("%w: no neighbour entry for %v", ErrNoRoute, next)
}

// AttachInterfaces attaches the program to the interfaces named in names,
// in the loader's namespace, or with names empty to every interface that
// is up (lo included): where a program that serves the host's addresses
// attaches.
func (l *Loader) AttachInterfaces(names []string) error {
	ifs, err := l.interfaces(names)
	if err != nil {
		return err
	}
	return l.Attach(ifs...)
}

// interfaces returns the indexes of the interfaces AttachInterfaces
// attaches to.
func (l *Loader) interfaces(names []string) ([]int, error) {
	links, err := l.nl.LinkList()
	if err != nil {
		return nil, fmt.Errorf("kfast: links: %w", err)
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	named := len(names) > 0
	var out []int
	for _, link := range links {
		a := link.Attrs()
		if named && want[a.Name] || !named && a.Flags&net.FlagUp != 0 {
			out = append(out, a.Index)
			delete(want, a.Name)
		}
	}
	if len(want) > 0 {
		return nil, fmt.Errorf("%w: no interface %v", ErrConfig, want)
	}
	return out, nil
}
