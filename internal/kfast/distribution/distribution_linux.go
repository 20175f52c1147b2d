//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package distribution

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/traverse-rtc/traverse/internal/distribute"
	"github.com/traverse-rtc/traverse/internal/kfast"
)

// Path is the name of this path (distribute.Server.Path, the path_info
// metric).
const Path = "ebpf"

// Program and map names in internal/kfast's object.
const (
	program    = "distribute"
	streamsMap = "dist_streams"
	lastMap    = "dist_last"
)

// maxFan is the program's DIST_MAX_FAN: a stream with more receivers
// stays in user space.
const maxFan = 64

// maxSlots is how many counter slots (streams plus receivers) the kernel
// holds, as many as the table hands out; a stream whose slots do not fit
// stays in user space.
const maxSlots = 1 << 16

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

// key is bpf/distribute.c's struct dist_key.
type key struct {
	Daddr   uint32
	Dport   uint16
	HasSSRC uint16
	SSRC    uint32
}

// rcv is struct dist_rcv.
type rcv struct {
	Out      kfast.Out
	Dmac     [6]byte
	Smac     [6]byte
	Padding_ uint32
}

// value is struct dist_value.
type value struct {
	Source   uint32
	N        uint32
	Slot     uint32
	Padding_ uint32
	R        [maxFan]rcv
}

// Kernel is the loaded program with its maps. It is safe for concurrent
// use.
type Kernel struct {
	ncpu int

	mu        sync.Mutex // guards everything below
	l         *kfast.Loader
	installed map[key]value
	slots     map[uint32]uint32 // the table's counter slots -> the loader's
	hops      map[netip.Addr]resolved
	closed    bool
}

// resolved is a receiver address's hop, looked up once per resolveTTL: a
// table change syncs every stream, and without it each would cost netlink
// round trips per receiver.
type resolved struct {
	h  kfast.Hop
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
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("distribution: %w", err)
	}
	l, err := kfast.Load(kfast.Config{NetNS: cfg.NetNS, Clsact: cfg.Clsact, Program: program,
		Maps: map[string]uint32{streamsMap: uint32(cfg.MaxStreams), lastMap: maxSlots}, Slots: maxSlots})
	if err != nil {
		return nil, fmt.Errorf("distribution: %w", err)
	}
	k := &Kernel{ncpu: ncpu, l: l, installed: map[key]value{}, slots: map[uint32]uint32{}, hops: map[netip.Addr]resolved{}}
	if err := l.AttachInterfaces(cfg.Interfaces); err != nil {
		l.Close()
		return nil, fmt.Errorf("distribution: %w", err)
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
func (k *Kernel) Modes() map[int]kfast.Mode {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.l.Attachments()
}

// Sync implements distribute.Kernel: it installs the streams it can serve
// and removes the others.
func (k *Kernel) Sync(streams []distribute.KernelStream) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return errors.New("distribution: closed")
	}
	var errs []error
	want := make(map[key]value, len(streams))
	used := map[uint32]bool{}
	for _, s := range streams {
		ky, v, ok, err := k.entryLocked(s)
		if err != nil {
			errs = append(errs, err)
		}
		if !ok {
			continue
		}
		want[ky] = v
		used[s.Slot] = true
		for _, r := range s.Receivers {
			used[r.Slot] = true
		}
	}
	m := k.l.Map(streamsMap)
	// Removals first: what leaves the kernel is served by user space from
	// the next packet on.
	for ky := range k.installed {
		if _, ok := want[ky]; !ok {
			if err := m.Delete(ky); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("distribution: delete stream: %w", err))
				continue
			}
			delete(k.installed, ky)
		}
	}
	for ky, v := range want {
		if old, ok := k.installed[ky]; ok && old == v {
			continue
		}
		if err := m.Put(ky, &v); err != nil {
			errs = append(errs, fmt.Errorf("distribution: install stream: %w", err))
			continue
		}
		k.installed[ky] = v
	}
	// Slots no installed entry names any more go back (after the deletes).
	inUse := map[uint32]bool{}
	for _, v := range k.installed {
		inUse[v.Slot] = true
		for i := range v.N {
			inUse[v.R[i].Out.Slot] = true
		}
	}
	for ts, ls := range k.slots {
		if !used[ts] && !inUse[ls] {
			k.l.Release(ls)
			delete(k.slots, ts)
		}
	}
	return errors.Join(errs...)
}

// slotLocked is the loader's counter slot for the table's slot ts, taken
// (zeroed, its last time too) when first seen.
func (k *Kernel) slotLocked(ts uint32) (uint32, error) {
	if ls, ok := k.slots[ts]; ok {
		return ls, nil
	}
	s, err := k.l.Slots(1)
	if err != nil {
		return 0, err
	}
	if err := k.l.Map(lastMap).Put(s[0], make([]uint64, k.ncpu)); err != nil {
		k.l.Release(s...)
		return 0, fmt.Errorf("distribution: reset last: %w", err)
	}
	k.slots[ts] = s[0]
	return s[0], nil
}

// entryLocked builds a stream's map entry; ok is false when the kernel
// cannot serve it (err says why when it is not the stream's shape).
func (k *Kernel) entryLocked(s distribute.KernelStream) (key, value, bool, error) {
	var ky key
	var v value
	dst, err := kfast.V4(s.Key.Dst)
	if err != nil || len(s.Receivers) == 0 || len(s.Receivers) > maxFan {
		return ky, v, false, nil
	}
	t := kfast.TupleOf(dst, dst)
	ky.Daddr, ky.Dport = t.Daddr, t.Dport
	if s.Key.HasSSRC {
		ky.HasSSRC = 1
		ky.SSRC = be32(s.Key.SSRC)
	}
	if s.Source.IsValid() {
		src, err := kfast.V4(netip.AddrPortFrom(s.Source, 1))
		if err != nil {
			return ky, v, false, nil
		}
		v.Source = kfast.TupleOf(src, src).Saddr
	}
	for i, r := range s.Receivers {
		to, err := kfast.V4(r.Addr)
		if err != nil {
			return ky, v, false, nil
		}
		h, ok := k.hopLocked(to.Addr())
		if !ok {
			return ky, v, false, nil
		}
		ls, err := k.slotLocked(r.Slot)
		if err != nil {
			return ky, v, false, fmt.Errorf("distribution: receiver slot: %w", err)
		}
		v.R[i] = rcv{Out: h.To(dst, to, ls, 0), Dmac: h.Dst, Smac: h.Src}
		// bpf_clone_redirect sends through the interface, local receivers too.
		v.R[i].Out.Ifindex = uint32(h.Ifindex)
	}
	ls, err := k.slotLocked(s.Slot)
	if err != nil {
		return ky, v, false, fmt.Errorf("distribution: stream slot: %w", err)
	}
	v.Slot = ls
	v.N = uint32(len(s.Receivers))
	return ky, v, true, nil
}

// hopLocked is Loader.Hop through the cache.
func (k *Kernel) hopLocked(a netip.Addr) (kfast.Hop, bool) {
	now := time.Now()
	if c, ok := k.hops[a]; ok && now.Sub(c.at) < resolveTTL {
		return c.h, c.ok
	}
	h, err := k.l.Hop(a)
	if len(k.hops) > 1<<16 {
		clear(k.hops)
	}
	k.hops[a] = resolved{h: h, ok: err == nil, at: now}
	return h, err == nil
}

// Counts implements distribute.Kernel: the sum over CPUs of slot, and
// the latest time, moved from CLOCK_MONOTONIC (bpf_ktime_get_ns) to unix
// time.
func (k *Kernel) Counts(slot uint32) (packets, bytes uint64, last int64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	ls, ok := k.slots[slot]
	if k.closed || !ok {
		return 0, 0, 0
	}
	c, err := k.l.Read(ls)
	if err != nil {
		return 0, 0, 0
	}
	var per []uint64
	if err := k.l.Map(lastMap).Lookup(ls, &per); err != nil {
		return c.Packets, c.Bytes, 0
	}
	var mono uint64
	for _, t := range per {
		mono = max(mono, t)
	}
	if mono == 0 {
		return c.Packets, c.Bytes, 0
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return c.Packets, c.Bytes, 0
	}
	return c.Packets, c.Bytes, time.Now().UnixNano() - (ts.Nano() - int64(mono))
}

// Close detaches the program and frees its maps. It is idempotent.
func (k *Kernel) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil
	}
	k.closed = true
	return k.l.Close()
}

func be32(v uint32) uint32 { return v>>24 | v>>8&0xff00 | v<<8&0xff0000 | v<<24 }
