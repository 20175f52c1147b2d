//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

// Package distbpf is the kernel path of internal/distribute: a tc program
// (bpf/distribute.c) that sends each RTP packet of a stream to every
// receiver with bpf_clone_redirect, rewriting addresses, ports, Ethernet
// addresses and checksums per receiver, with per-receiver counters in a
// per-CPU map. It implements distribute.Kernel; the user-space path stays
// behind it for whatever it passes (RTCP, unresolved receivers, strangers).
package distbpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/traverse-rtc/traverse/internal/distribute"
	"github.com/traverse-rtc/traverse/internal/tcattach"
)

// Path is the name of this path (distribute.Server.Path, the path_info
// metric).
const Path = "ebpf"

// maxFan is the program's MAX_FAN: a stream with more receivers stays in
// user space.
const maxFan = 64

// Config configures the kernel path.
type Config struct {
	// NetNS is the network namespace (a file descriptor) whose interfaces
	// the program is attached to; 0: the current one.
	NetNS int
	// Clsact forces a clsact qdisc filter where TCX is available.
	Clsact bool
	// MaxStreams sizes the streams map (0: distribute.DefaultMaxStreams).
	MaxStreams int
	// Interfaces are the interface names to attach to (empty: every
	// interface that is up, lo included).
	Interfaces []string
}

// Kernel is the loaded program with its maps. It is safe for concurrent
// use.
type Kernel struct {
	ncpu int

	mu        sync.Mutex // guards everything below
	objs      *distributeObjects
	nl        *netlink.Handle
	attached  *tcattach.Set
	installed map[distributeDistKey]distributeDistValue
	known     map[uint32]bool // counter slots in use (zeroed when first seen)
	routes    map[netip.Addr]resolved
	closed    bool
}

// resolved is a receiver address's route and link addresses, looked up
// once per resolveTTL: a table change syncs every stream, and without it
// each would cost netlink round trips per receiver.
type resolved struct {
	r  distributeDistRcv // Addr, Port and Slot unset
	ok bool
	at time.Time
}

// resolveTTL bounds how long a route or neighbour change takes to reach
// the kernel's entries (the table resyncs every second).
const resolveTTL = time.Second

var _ distribute.Kernel = (*Kernel)(nil)

// New loads the program and attaches it.
func New(cfg Config) (*Kernel, error) {
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = distribute.DefaultMaxStreams
	}
	objs := new(distributeObjects)
	nl, ncpu, err := tcattach.Load(cfg.NetNS, loadDistribute, map[string]uint32{distributeMapStreams: uint32(cfg.MaxStreams)}, objs)
	if err != nil {
		return nil, fmt.Errorf("distbpf: %w", err)
	}
	k := &Kernel{ncpu: ncpu, objs: objs, nl: nl, attached: tcattach.NewSet(cfg.NetNS, nl, objs.Distribute, cfg.Clsact),
		installed: map[distributeDistKey]distributeDistValue{}, known: map[uint32]bool{}, routes: map[netip.Addr]resolved{}}
	links, err := nl.LinkList()
	if err != nil {
		k.Close()
		return nil, fmt.Errorf("distbpf: links: %w", err)
	}
	want := map[string]bool{}
	for _, n := range cfg.Interfaces {
		want[n] = true
	}
	for _, l := range links {
		a := l.Attrs()
		if len(want) > 0 && !want[a.Name] || len(want) == 0 && a.Flags&net.FlagUp == 0 {
			continue
		}
		if err := k.attached.Attach(a.Index); err != nil {
			k.Close()
			return nil, fmt.Errorf("distbpf: %s: %w", a.Name, err)
		}
	}
	return k, nil
}

// Installed returns how many streams the kernel serves now.
func (k *Kernel) Installed() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.installed)
}

// Path implements distribute.Kernel.
func (k *Kernel) Path() string { return Path }

// Modes returns how the program is attached, by interface index.
func (k *Kernel) Modes() map[int]tcattach.Mode {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.attached.Modes()
}

// Sync implements distribute.Kernel: it installs the streams it can serve
// and removes the others.
func (k *Kernel) Sync(streams []distribute.KernelStream) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return errors.New("distbpf: closed")
	}
	want := make(map[distributeDistKey]distributeDistValue, len(streams))
	slots := map[uint32]bool{}
	for _, s := range streams {
		key, v, ok := k.entry(s)
		if !ok {
			continue
		}
		want[key] = v
		slots[v.Slot] = true
		for i := range v.N {
			slots[v.R[i].Slot] = true
		}
	}
	var errs []error
	// Removals first: what leaves the kernel is served by user space from
	// the next packet on.
	for key := range k.installed {
		if _, ok := want[key]; !ok {
			if err := k.objs.Streams.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("distbpf: delete stream: %w", err))
				continue
			}
			delete(k.installed, key)
		}
	}
	for s := range slots {
		if !k.known[s] {
			if err := k.objs.Counters.Put(s, make([]distributeDistCounters, k.ncpu)); err != nil {
				errs = append(errs, fmt.Errorf("distbpf: reset counters: %w", err))
				continue
			}
			k.known[s] = true
		}
	}
	for s := range k.known {
		if !slots[s] {
			delete(k.known, s)
		}
	}
	for key, v := range want {
		if old, ok := k.installed[key]; ok && old == v {
			continue
		}
		if err := k.objs.Streams.Put(key, &v); err != nil {
			errs = append(errs, fmt.Errorf("distbpf: install stream: %w", err))
			continue
		}
		k.installed[key] = v
	}
	return errors.Join(errs...)
}

// entry builds a stream's map entry; ok is false when the kernel cannot
// serve it.
func (k *Kernel) entry(s distribute.KernelStream) (distributeDistKey, distributeDistValue, bool) {
	var key distributeDistKey
	var v distributeDistValue
	dst := s.Key.Dst
	if !dst.Addr().Is4() || dst.Addr().IsUnspecified() || len(s.Receivers) == 0 || len(s.Receivers) > maxFan ||
		s.Slot >= uint32(k.objs.Counters.MaxEntries()) {
		return key, v, false
	}
	key.Daddr, key.Dport = tcattach.BE32(dst.Addr()), tcattach.BE16(dst.Port())
	if s.Key.HasSSRC {
		key.HasSsrc = 1
		key.Ssrc = be32(s.Key.SSRC)
	}
	if s.Source.IsValid() {
		if !s.Source.Is4() {
			return key, v, false
		}
		v.Source = tcattach.BE32(s.Source)
	}
	v.Slot = s.Slot
	for i, r := range s.Receivers {
		rc, ok := k.resolveCached(r.Addr.Addr())
		if !ok || r.Slot >= uint32(k.objs.Counters.MaxEntries()) {
			return key, v, false
		}
		rc.Addr, rc.Port, rc.Slot = tcattach.BE32(r.Addr.Addr()), tcattach.BE16(r.Addr.Port()), r.Slot
		v.R[i] = rc
	}
	v.N = uint32(len(s.Receivers))
	return key, v, true
}

// resolveCached is resolve through the cache.
func (k *Kernel) resolveCached(a netip.Addr) (distributeDistRcv, bool) {
	now := time.Now()
	if c, ok := k.routes[a]; ok && now.Sub(c.at) < resolveTTL {
		return c.r, c.ok
	}
	r, ok := k.resolve(netip.AddrPortFrom(a, 0))
	if len(k.routes) > 1<<16 {
		clear(k.routes)
	}
	k.routes[a] = resolved{r: r, ok: ok, at: now}
	return r, ok
}

// resolve finds the interface and Ethernet addresses a receiver is sent
// with: the route's device and the neighbour entry of its next hop (for
// a local address, lo and zero addresses). Without a usable neighbour
// entry it fails: user space sends meanwhile, which resolves it.
func (k *Kernel) resolve(a netip.AddrPort) (distributeDistRcv, bool) {
	r := distributeDistRcv{Addr: tcattach.BE32(a.Addr()), Port: tcattach.BE16(a.Port())}
	if !a.Addr().Is4() {
		return r, false
	}
	routes, err := k.nl.RouteGet(a.Addr().AsSlice())
	if err != nil || len(routes) == 0 {
		return r, false
	}
	rt := routes[0]
	if rt.Type == unix.RTN_LOCAL {
		lo, err := k.nl.LinkByName("lo")
		if err != nil {
			return r, false
		}
		r.Ifindex = uint32(lo.Attrs().Index)
		return r, true
	}
	l, err := k.nl.LinkByIndex(rt.LinkIndex)
	if err != nil || l.Attrs().EncapType != "ether" || len(l.Attrs().HardwareAddr) != 6 {
		return r, false
	}
	hop := a.Addr()
	if g, ok := netip.AddrFromSlice(rt.Gw); ok && g.IsValid() && !g.IsUnspecified() {
		hop = g.Unmap()
	}
	neighs, err := k.nl.NeighList(rt.LinkIndex, unix.AF_INET)
	if err != nil {
		return r, false
	}
	for _, n := range neighs {
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || ip.Unmap() != hop || len(n.HardwareAddr) != 6 {
			continue
		}
		if n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE|netlink.NUD_PERMANENT) == 0 {
			continue
		}
		r.Ifindex = uint32(rt.LinkIndex)
		copy(r.Dmac[:], n.HardwareAddr)
		copy(r.Smac[:], l.Attrs().HardwareAddr)
		return r, true
	}
	return r, false
}

// Counts implements distribute.Kernel: the sum over CPUs of slot, and
// the latest time, moved from CLOCK_MONOTONIC (bpf_ktime_get_ns) to unix
// time.
func (k *Kernel) Counts(slot uint32) (packets, bytes uint64, last int64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed || !k.known[slot] {
		return 0, 0, 0
	}
	var per []distributeDistCounters
	if err := k.objs.Counters.Lookup(slot, &per); err != nil {
		return 0, 0, 0
	}
	var mono uint64
	for _, c := range per {
		packets += c.Packets
		bytes += c.Bytes
		mono = max(mono, c.Last)
	}
	if mono == 0 {
		return packets, bytes, 0
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return packets, bytes, 0
	}
	return packets, bytes, time.Now().UnixNano() - (ts.Nano() - int64(mono))
}

// Close detaches the program and frees its maps. It is idempotent.
func (k *Kernel) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil
	}
	k.closed = true
	err := k.attached.Close()
	k.objs.Close()
	k.nl.Close()
	return err
}

func be32(v uint32) uint32 { return v>>24 | v>>8&0xff00 | v<<8&0xff0000 | v<<24 }
