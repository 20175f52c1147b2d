//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package turnoffload

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/traverse-rtc/traverse/internal/tcattach"
	"github.com/traverse-rtc/traverse/internal/turn"
)

// maxData is the program's MAX_DATA: longer payloads stay in user space.
const maxData = 2000

// Offloader installs TURN flows into the turnrelay program. It is safe for
// concurrent use.
type Offloader struct {
	cfg  Config
	ncpu int

	mu       sync.Mutex // guards everything below
	objs     *turnrelayObjects
	nl       *netlink.Handle
	attached *tcattach.Set // the program on the interfaces flows arrive on
	flows    map[turn.OffloadFlow]*entry
	keys     map[turnrelayRelayKey]turn.OffloadFlow
	free     []uint32 // counter slots
}

// entry is an installed flow: its two keys and values.
type entry struct {
	upKey, downKey turnrelayRelayKey
	up, down       turnrelayRelayValue
}

var _ turn.Offloader = (*Offloader)(nil)

// New loads the program and creates its maps. Nothing is attached until
// the first flow arrives.
func New(cfg Config) (*Offloader, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	objs := new(turnrelayObjects)
	nl, ncpu, err := tcattach.Load(cfg.NetNS, loadTurnrelay, map[string]uint32{
		turnrelayMapRelays:   uint32(2 * cfg.MaxFlows),
		turnrelayMapCounters: uint32(2 * cfg.MaxFlows),
	}, objs)
	if err != nil {
		return nil, fmt.Errorf("turnoffload: %w", err)
	}
	o := &Offloader{cfg: cfg, ncpu: ncpu, objs: objs, nl: nl, attached: tcattach.NewSet(cfg.NetNS, nl, objs.TurnRelay, cfg.Clsact),
		flows: map[turn.OffloadFlow]*entry{}, keys: map[turnrelayRelayKey]turn.OffloadFlow{}}
	o.free = make([]uint32, 0, 2*cfg.MaxFlows)
	for i := 2*cfg.MaxFlows - 1; i >= 0; i-- {
		o.free = append(o.free, uint32(i))
	}
	return o, nil
}

func v4(ap netip.AddrPort) (netip.AddrPort, error) {
	a := ap.Addr().Unmap()
	if !a.Is4() || a.IsUnspecified() || ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("%w: %v", ErrNotIPv4, ap)
	}
	return netip.AddrPortFrom(a, ap.Port()), nil
}

func key(src, dst netip.AddrPort, channel uint16) turnrelayRelayKey {
	return turnrelayRelayKey{Saddr: tcattach.BE32(src.Addr()), Daddr: tcattach.BE32(dst.Addr()),
		Sport: tcattach.BE16(src.Port()), Dport: tcattach.BE16(dst.Port()), Channel: tcattach.BE16(channel)}
}

func value(src, dst netip.AddrPort, r tcattach.Route, slot uint32, channel uint16) turnrelayRelayValue {
	v := turnrelayRelayValue{Saddr: tcattach.BE32(src.Addr()), Daddr: tcattach.BE32(dst.Addr()),
		Sport: tcattach.BE16(src.Port()), Dport: tcattach.BE16(dst.Port()), Slot: slot, Channel: tcattach.BE16(channel),
		MaxLen: uint32(r.MTU)}
	if !r.Local {
		v.Ifindex = uint32(r.Ifindex)
	}
	if v.MaxLen == 0 || v.MaxLen > 0xffff {
		v.MaxLen = 0xffff
	}
	return v
}

// monotonic converts t to CLOCK_MONOTONIC nanoseconds, the program's
// clock (bpf_ktime_get_ns).
func monotonic(t time.Time) uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	d := time.Until(t)
	if d < 0 {
		d = 0
	}
	return uint64(ts.Nano()) + uint64(d)
}

// Install adds both directions of f, or moves the deadline of an installed
// f.
func (o *Offloader) Install(f turn.OffloadFlow, deadline time.Time) error {
	var err error
	n := f
	for _, p := range []*netip.AddrPort{&n.Client, &n.Listen, &n.Relayed, &n.Peer} {
		if *p, err = v4(*p); err != nil {
			return err
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.objs == nil {
		return ErrClosed
	}
	dl := monotonic(deadline)
	if e := o.flows[f]; e != nil {
		e.up.Deadline, e.down.Deadline = dl, dl
		return o.put(e)
	}
	toPeer, err := tcattach.Lookup(o.nl, n.Peer.Addr())
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoRoute, err)
	}
	toClient, err := tcattach.Lookup(o.nl, n.Client.Addr())
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoRoute, err)
	}
	if toPeer.Local != toClient.Local {
		return fmt.Errorf("%w: one of %v and %v is local", ErrNoRoute, n.Client, n.Peer)
	}
	e := &entry{upKey: key(n.Client, n.Listen, n.Channel), downKey: key(n.Peer, n.Relayed, 0)}
	for _, k := range []turnrelayRelayKey{e.upKey, e.downKey} {
		if _, ok := o.keys[k]; ok {
			return ErrConflict
		}
	}
	if len(o.free) < 2 {
		return ErrFull
	}
	// Packets of each direction arrive on the interface their sender is
	// routed through (symmetric routing assumed: others reach user space).
	for _, i := range []int{toClient.Ifindex, toPeer.Ifindex} {
		if err := o.attached.Attach(i); err != nil {
			return fmt.Errorf("turnoffload: %w", err)
		}
	}
	up, down := o.free[len(o.free)-1], o.free[len(o.free)-2]
	for _, s := range []uint32{up, down} {
		if err := o.objs.Counters.Put(s, make([]turnrelayRelayCounters, o.ncpu)); err != nil {
			return fmt.Errorf("turnoffload: reset counters: %w", err)
		}
	}
	o.free = o.free[:len(o.free)-2]
	e.up = value(n.Relayed, n.Peer, toPeer, up, 0)
	e.down = value(n.Listen, n.Client, toClient, down, n.Channel)
	e.up.Deadline, e.down.Deadline = dl, dl
	if err := o.put(e); err != nil {
		_ = o.objs.Relays.Delete(e.upKey)
		_ = o.objs.Relays.Delete(e.downKey)
		o.free = append(o.free, up, down)
		return err
	}
	o.flows[f] = e
	o.keys[e.upKey], o.keys[e.downKey] = f, f
	return nil
}

func (o *Offloader) put(e *entry) error {
	if err := o.objs.Relays.Put(e.upKey, e.up); err != nil {
		return fmt.Errorf("turnoffload: install flow: %w", err)
	}
	if err := o.objs.Relays.Put(e.downKey, e.down); err != nil {
		return fmt.Errorf("turnoffload: install flow: %w", err)
	}
	return nil
}

// Remove uninstalls f; interfaces keep the program (it passes what the map
// does not hold) until Close.
func (o *Offloader) Remove(f turn.OffloadFlow) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	e := o.flows[f]
	if e == nil || o.objs == nil {
		return nil
	}
	delete(o.flows, f)
	delete(o.keys, e.upKey)
	delete(o.keys, e.downKey)
	var errs []error
	for _, k := range []turnrelayRelayKey{e.upKey, e.downKey} {
		if err := o.objs.Relays.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	o.free = append(o.free, e.up.Slot, e.down.Slot)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("turnoffload: remove flow: %w", err)
	}
	return nil
}

// Counters sums f's per-CPU counters.
func (o *Offloader) Counters(f turn.OffloadFlow) (toPeer, toClient turn.OffloadCounts, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	e := o.flows[f]
	if e == nil || o.objs == nil {
		return toPeer, toClient, ErrClosed
	}
	if toPeer, err = o.slot(e.up.Slot); err != nil {
		return
	}
	toClient, err = o.slot(e.down.Slot)
	return
}

func (o *Offloader) slot(s uint32) (turn.OffloadCounts, error) {
	var vs []turnrelayRelayCounters
	if err := o.objs.Counters.Lookup(s, &vs); err != nil {
		return turn.OffloadCounts{}, fmt.Errorf("turnoffload: read counters: %w", err)
	}
	var c turn.OffloadCounts
	for _, v := range vs {
		c.Packets += v.Packets
		c.Bytes += v.Bytes
	}
	return c, nil
}

// Flows returns the number of flows installed.
func (o *Offloader) Flows() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.flows)
}

// Attachments returns the interfaces the program is attached to and how.
func (o *Offloader) Attachments() map[int]tcattach.Mode {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.attached == nil {
		return map[int]tcattach.Mode{}
	}
	return o.attached.Modes()
}

// Close detaches the program from every interface and frees the program
// and its maps. It is idempotent.
func (o *Offloader) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.objs == nil {
		return nil
	}
	err := errors.Join(o.attached.Close(), o.objs.Close())
	o.nl.Close()
	o.objs, o.attached, o.flows, o.keys = nil, nil, nil, nil
	return err
}
