//go:build linux

package kfast

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/traverse-rtc/traverse/internal/nsthread"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Mode says how a program was attached.
type Mode string

// Attachment modes.
const (
	TCX    Mode = "tcx"
	Clsact Mode = "clsact"
)

// attachment is a program on an interface's ingress. Close detaches it.
type attachment struct {
	Ifindex int
	Mode    Mode
	tcx     link.Link
	filter  *netlink.BpfFilter
	nl      *netlink.Handle
}

// Close detaches the program.
func (a *attachment) Close() error {
	if a.tcx != nil {
		return a.tcx.Close()
	}
	if a.filter != nil {
		return a.nl.FilterDel(a.filter)
	}
	return nil
}

// ingress attaches prog to ifindex's ingress in network namespace ns (0:
// the current one; nl must be a handle in the same namespace): with TCX,
// or when the kernel lacks it (or forceClsact is set), as a direct-action
// filter on a clsact qdisc, created when missing.
func ingress(ns int, nl *netlink.Handle, ifindex int, prog *ebpf.Program, forceClsact bool) (*attachment, error) {
	if !forceClsact {
		var l link.Link
		err := InNetNS(ns, func() error {
			var err error
			l, err = link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: ebpf.AttachTCXIngress})
			return err
		})
		if err == nil {
			return &attachment{Ifindex: ifindex, Mode: TCX, tcx: l}, nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return nil, fmt.Errorf("kfast: tcx on interface %d: %w", ifindex, err)
		}
	}
	q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0),
		Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
	if err := nl.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("kfast: clsact qdisc on interface %d: %w", ifindex, err)
	}
	info, err := prog.Info()
	name := "traverse"
	if err == nil && info.Name != "" {
		name = info.Name
	}
	f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: netlink.HANDLE_MIN_INGRESS,
		Handle: netlink.MakeHandle(0, 1), Protocol: unix.ETH_P_ALL, Priority: 1},
		Fd: prog.FD(), Name: name, DirectAction: true}
	// Priority 1, handle 1 is ours; a free priority is found if taken.
	for prio := uint16(1); ; prio++ {
		f.Priority = prio
		err = nl.FilterAdd(f)
		if err == nil || !errors.Is(err, unix.EEXIST) || prio == 64 {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("kfast: tc filter on interface %d: %w", ifindex, err)
	}
	return &attachment{Ifindex: ifindex, Mode: Clsact, filter: f, nl: nl}, nil
}

// InNetNS runs f on a thread switched into network namespace ns (0: f runs
// where it is).
func InNetNS(ns int, f func() error) error {
	if ns == 0 {
		return f()
	}
	return nsthread.Do(netns.NsHandle(ns), f)
}

// handle returns a netlink handle in namespace ns (0: the current one).
func handle(ns int) (*netlink.Handle, error) {
	if ns != 0 {
		return netlink.NewHandleAt(netns.NsHandle(ns))
	}
	return netlink.NewHandle()
}

// lookup returns the route to dst: a local address, or an Ethernet device
// (the programs assume a 14-byte header). Anything else is ErrNoRoute.
func lookup(nl *netlink.Handle, dst netip.Addr) (Route, error) {
	routes, err := nl.RouteGet(dst.AsSlice())
	if err != nil {
		return Route{}, fmt.Errorf("%w: route to %v: %w", ErrNoRoute, dst, err)
	}
	if len(routes) == 0 {
		return Route{}, fmt.Errorf("%w: no route to %v", ErrNoRoute, dst)
	}
	r := routes[0]
	if r.Type == unix.RTN_LOCAL {
		lo, err := nl.LinkByName("lo")
		if err != nil {
			return Route{}, fmt.Errorf("%w: lo: %w", ErrNoRoute, err)
		}
		return Route{Local: true, Ifindex: lo.Attrs().Index, MTU: lo.Attrs().MTU}, nil
	}
	if r.LinkIndex == 0 {
		return Route{}, fmt.Errorf("%w: %v has no device", ErrNoRoute, dst)
	}
	l, err := nl.LinkByIndex(r.LinkIndex)
	if err != nil {
		return Route{}, fmt.Errorf("%w: link %d: %w", ErrNoRoute, r.LinkIndex, err)
	}
	if a := l.Attrs(); a.EncapType != "ether" || len(a.HardwareAddr) != 6 {
		return Route{}, fmt.Errorf("%w: %s is not an Ethernet device", ErrNoRoute, a.Name)
	}
	return Route{Ifindex: r.LinkIndex, MTU: l.Attrs().MTU}, nil
}
