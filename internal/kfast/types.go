package kfast

import (
	"errors"
	"fmt"
	"net/netip"
)

// Sentinel errors of the kernel fast path.
var (
	// ErrUnsupported: the platform has no eBPF tc programs (not Linux, or
	// a big-endian machine the programs are not built for).
	ErrUnsupported = errors.New("kfast: eBPF offload needs Linux on a little-endian machine")
	// ErrNotIPv4: an address is not a specific IPv4 address (or
	// IPv4-mapped IPv6) with a port.
	ErrNotIPv4 = errors.New("kfast: only IPv4 addresses with ports")
	// ErrNoRoute: no route to the address, or not through a device the
	// programs can handle.
	ErrNoRoute = errors.New("kfast: no usable route")
	// ErrFull: every counter slot is in use.
	ErrFull = errors.New("kfast: no free counter slot")
	// ErrConfig: the configuration is invalid.
	ErrConfig = errors.New("kfast: invalid config")
)

// CountersMap is the name of the per-CPU counter slots every program has
// (include/kfast.h).
const CountersMap = "counters"

// Config configures a Loader.
type Config struct {
	// NetNS is a network namespace file descriptor (0: the current one):
	// routes and interfaces are looked up and the program attached there.
	NetNS int
	// Clsact attaches with a clsact qdisc filter even where TCX exists
	// (for tests of the older kernels' path).
	Clsact bool
	// Program is the name of the tc program (its C function's name in
	// bpf/).
	Program string
	// Maps gives the program's own maps their maximum entries, by name.
	Maps map[string]uint32
	// Slots is how many counter slots the counters map holds (at least 1).
	Slots int
}

// FlowConfig is what every offloader on kfast is configured with.
type FlowConfig struct {
	// NetNS is a network namespace file descriptor (0: the current one):
	// routes and interfaces are looked up and the program attached there.
	NetNS int
	// MaxFlows is how many flows the kernel holds (the offloader's
	// default when 0, at most 1<<20; two map entries and two counter slots
	// each). Beyond it, new flows stay in user space (ErrFull).
	MaxFlows int
	// Clsact attaches with a clsact qdisc filter even where TCX exists
	// (for tests of the older kernels' path).
	Clsact bool
}

// Validate applies the default max flows def and checks the limits.
func (c *FlowConfig) Validate(def int) error {
	if c.MaxFlows == 0 {
		c.MaxFlows = def
	}
	if c.MaxFlows < 0 || c.MaxFlows > 1<<20 {
		return fmt.Errorf("%w: MaxFlows %d", ErrConfig, c.MaxFlows)
	}
	return nil
}

// Route is where the host sends packets for an address.
type Route struct {
	// Local is set when the address is the host's own: packets for it
	// stay on the host (through lo), and Ifindex is lo's.
	Local   bool
	Ifindex int
	MTU     int
}

// Tuple is include/kfast.h's struct kf_tuple: a UDP 4-tuple whose
// in-memory bytes are network byte order (on the little-endian hosts the
// programs are built for).
type Tuple struct {
	Saddr, Daddr uint32
	Sport, Dport uint16
}

// Out is include/kfast.h's struct kf_out, the head of every map value:
// the rewritten tuple, the egress, the counter slot, the deadline and the
// largest IP length the egress takes.
type Out struct {
	Deadline uint64 // CLOCK_MONOTONIC ns (Deadline); 0: none
	To       Tuple
	Ifindex  uint32 // 0: up the local stack
	Slot     uint32
	MaxLen   uint32
}

// Counts is one counter slot summed over every CPU: the packets a program
// carried and the bytes it chose to count (IP length, payload...).
type Counts struct {
	Packets, Bytes uint64
}

// V4 returns ap as an IPv4 address and port, unmapping an IPv4-mapped
// IPv6 address (::ffff:a.b.c.d, which dual-stack sockets report); anything
// else, an unspecified address or port 0 is ErrNotIPv4.
func V4(ap netip.AddrPort) (netip.AddrPort, error) {
	a := ap.Addr().Unmap()
	if !a.Is4() || a.IsUnspecified() || ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("%w: %v", ErrNotIPv4, ap)
	}
	return netip.AddrPortFrom(a, ap.Port()), nil
}

// TupleOf is the tuple of a packet from src to dst (both IPv4, see V4).
func TupleOf(src, dst netip.AddrPort) Tuple {
	return Tuple{Saddr: be32(src.Addr()), Daddr: be32(dst.Addr()), Sport: BE16(src.Port()), Dport: BE16(dst.Port())}
}

// To is the Out that sends a packet as src -> dst through r, counted in
// slot, until deadline (0: none): out of r's interface, or up the stack
// when r is local; MaxLen is r's MTU.
func (r Route) To(src, dst netip.AddrPort, slot uint32, deadline uint64) Out {
	o := Out{Deadline: deadline, To: TupleOf(src, dst), Slot: slot, MaxLen: uint32(r.MTU)}
	if !r.Local {
		o.Ifindex = uint32(r.Ifindex)
	}
	if o.MaxLen == 0 || o.MaxLen > 0xffff {
		o.MaxLen = 0xffff
	}
	return o
}

// be32 gives the value whose in-memory bytes (little-endian host) are a's
// network byte order.
func be32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// BE16 gives the value whose in-memory bytes (little-endian host) are p's
// network byte order: how a program's map holds a port or a channel
// number.
func BE16(p uint16) uint16 { return p>>8 | p<<8 }
