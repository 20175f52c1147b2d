//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package turnchannel

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/traverse-rtc/traverse/internal/kfast"
	"github.com/traverse-rtc/traverse/internal/turn"
)

// maxData is KF_MAX_MOVE of include/move.h: longer payloads stay in user
// space.
const maxData = 2000

// The program and its map in internal/kfast/bpf/turnchannel.c.
const (
	program = "turnchannel"
	flowMap = "relays"
)

// Offloader installs TURN flows into the turnchannel program. It is safe
// for concurrent use.
type Offloader struct {
	*kfast.Table[turn.OffloadFlow, *entry]
	keys map[relayKey]turn.OffloadFlow // guarded by the table's lock (With)
}

// relayKey and relayValue are the program's struct relay_key and
// relay_value.
type relayKey struct {
	T       kfast.Tuple
	Channel uint16
	Pad     uint16
}

type relayValue struct {
	Out     kfast.Out
	Channel uint16
	Pad     uint16
	Pad2    uint32
}

// entry is an installed flow: its two keys and values.
type entry struct {
	upKey, downKey relayKey
	up, down       relayValue
}

var _ turn.Offloader = (*Offloader)(nil)

// New loads the program and creates its maps. Nothing is attached until
// the first flow arrives.
func New(cfg Config) (*Offloader, error) {
	if err := cfg.Validate(defaultMaxFlows); err != nil {
		return nil, err
	}
	t, err := kfast.NewTable[turn.OffloadFlow, *entry](cfg, program, flowMap, ErrClosed)
	if err != nil {
		return nil, fmt.Errorf("turnchannel: %w", err)
	}
	return &Offloader{Table: t, keys: map[relayKey]turn.OffloadFlow{}}, nil
}

func key(src, dst netip.AddrPort, channel uint16) relayKey {
	return relayKey{T: kfast.TupleOf(src, dst), Channel: kfast.BE16(channel)}
}

// Install adds both directions of f, or moves the deadline of an installed
// f.
func (o *Offloader) Install(f turn.OffloadFlow, deadline time.Time) error {
	var err error
	n := f
	for _, p := range []*netip.AddrPort{&n.Client, &n.Listen, &n.Relayed, &n.Peer} {
		if *p, err = kfast.V4(*p); err != nil {
			return err
		}
	}
	dl := kfast.Deadline(deadline)
	return o.With(func(l *kfast.Loader, flows map[turn.OffloadFlow]*entry) error {
		if e := flows[f]; e != nil {
			e.up.Out.Deadline, e.down.Out.Deadline = dl, dl
			return put(l, e)
		}
		e, err := o.install(l, n, dl)
		if err == nil {
			flows[f] = e
			o.keys[e.upKey], o.keys[e.downKey] = f, f
		}
		return err
	})
}

func (o *Offloader) install(l *kfast.Loader, n turn.OffloadFlow, dl uint64) (*entry, error) {
	toPeer, err := l.Route(n.Peer.Addr())
	if err != nil {
		return nil, err
	}
	toClient, err := l.Route(n.Client.Addr())
	if err != nil {
		return nil, err
	}
	if toPeer.Local != toClient.Local {
		return nil, fmt.Errorf("%w: one of %v and %v is local", kfast.ErrNoRoute, n.Client, n.Peer)
	}
	e := &entry{upKey: key(n.Client, n.Listen, n.Channel), downKey: key(n.Peer, n.Relayed, 0)}
	for _, k := range []relayKey{e.upKey, e.downKey} {
		if _, ok := o.keys[k]; ok {
			return nil, ErrConflict
		}
	}
	// Packets of each direction arrive on the interface their sender is
	// routed through (symmetric routing assumed: others reach user space).
	if err := l.Attach(toClient.Ifindex, toPeer.Ifindex); err != nil {
		return nil, fmt.Errorf("turnchannel: %w", err)
	}
	slots, err := l.Slots(2)
	if err != nil {
		return nil, err
	}
	e.up = relayValue{Out: toPeer.To(n.Relayed, n.Peer, slots[0], dl)}
	e.down = relayValue{Out: toClient.To(n.Listen, n.Client, slots[1], dl), Channel: kfast.BE16(n.Channel)}
	if err := put(l, e); err != nil {
		_ = del(l, e)
		l.Release(slots...)
		return nil, err
	}
	return e, nil
}

func put(l *kfast.Loader, e *entry) error {
	m := l.Map(flowMap)
	if err := m.Put(e.upKey, e.up); err != nil {
		return fmt.Errorf("turnchannel: install flow: %w", err)
	}
	if err := m.Put(e.downKey, e.down); err != nil {
		return fmt.Errorf("turnchannel: install flow: %w", err)
	}
	return nil
}

// del deletes e's entries from the map.
func del(l *kfast.Loader, e *entry) error {
	var errs []error
	for _, k := range []relayKey{e.upKey, e.downKey} {
		if err := l.Map(flowMap).Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Remove uninstalls f; interfaces keep the program (it passes what the map
// does not hold) until Close.
func (o *Offloader) Remove(f turn.OffloadFlow) error {
	err := o.With(func(l *kfast.Loader, flows map[turn.OffloadFlow]*entry) error {
		e := flows[f]
		if e == nil {
			return nil
		}
		delete(flows, f)
		delete(o.keys, e.upKey)
		delete(o.keys, e.downKey)
		err := del(l, e)
		l.Release(e.up.Out.Slot, e.down.Out.Slot)
		if err != nil {
			return fmt.Errorf("turnchannel: remove flow: %w", err)
		}
		return nil
	})
	if errors.Is(err, ErrClosed) {
		return nil
	}
	return err
}

// Counters sums f's per-CPU counters.
func (o *Offloader) Counters(f turn.OffloadFlow) (toPeer, toClient turn.OffloadCounts, err error) {
	err = o.With(func(l *kfast.Loader, flows map[turn.OffloadFlow]*entry) error {
		e := flows[f]
		if e == nil {
			return ErrClosed
		}
		up, err := l.Read(e.up.Out.Slot)
		if err != nil {
			return err
		}
		down, err := l.Read(e.down.Out.Slot)
		toPeer, toClient = turn.OffloadCounts(up), turn.OffloadCounts(down)
		return err
	})
	return toPeer, toClient, err
}
