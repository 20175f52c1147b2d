//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package turnchannel

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/traverse-rtc/traverse/internal/kfast"
	"github.com/traverse-rtc/traverse/internal/turn"
)

// maxData is KF_MAX_MOVE of include/move.h: longer payloads stay in user
// space.
const maxData = 2000

// Offloader installs TURN flows into the turnchannel program. It is safe
// for concurrent use.
type Offloader struct {
	mu    sync.Mutex // guards everything below
	l     *kfast.Loader
	flows map[turn.OffloadFlow]*entry
	keys  map[relayKey]turn.OffloadFlow
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
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	l, err := kfast.Load(loaderConfig(cfg), loadTurnchannel)
	if err != nil {
		return nil, fmt.Errorf("turnchannel: %w", err)
	}
	return &Offloader{l: l, flows: map[turn.OffloadFlow]*entry{}, keys: map[relayKey]turn.OffloadFlow{}}, nil
}

func loaderConfig(cfg Config) kfast.Config {
	return kfast.Config{NetNS: cfg.NetNS, Clsact: cfg.Clsact, Program: turnchannelProgTurnchannel,
		Maps: map[string]uint32{turnchannelMapRelays: uint32(2 * cfg.MaxFlows)}, Slots: 2 * cfg.MaxFlows}
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
			return fmt.Errorf("%w: %w", ErrNotIPv4, err)
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.l == nil {
		return ErrClosed
	}
	dl := kfast.Deadline(deadline)
	if e := o.flows[f]; e != nil {
		e.up.Out.Deadline, e.down.Out.Deadline = dl, dl
		return o.put(e)
	}
	toPeer, err := o.l.Route(n.Peer.Addr())
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoRoute, err)
	}
	toClient, err := o.l.Route(n.Client.Addr())
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoRoute, err)
	}
	if toPeer.Local != toClient.Local {
		return fmt.Errorf("%w: one of %v and %v is local", ErrNoRoute, n.Client, n.Peer)
	}
	e := &entry{upKey: key(n.Client, n.Listen, n.Channel), downKey: key(n.Peer, n.Relayed, 0)}
	for _, k := range []relayKey{e.upKey, e.downKey} {
		if _, ok := o.keys[k]; ok {
			return ErrConflict
		}
	}
	// Packets of each direction arrive on the interface their sender is
	// routed through (symmetric routing assumed: others reach user space).
	if err := o.l.Attach(toClient.Ifindex, toPeer.Ifindex); err != nil {
		return fmt.Errorf("turnchannel: %w", err)
	}
	slots, err := o.l.Slots(2)
	if err != nil {
		return err
	}
	e.up = relayValue{Out: toPeer.To(n.Relayed, n.Peer, slots[0], dl)}
	e.down = relayValue{Out: toClient.To(n.Listen, n.Client, slots[1], dl), Channel: kfast.BE16(n.Channel)}
	if err := o.put(e); err != nil {
		o.del(e)
		o.l.Release(slots...)
		return err
	}
	o.flows[f] = e
	o.keys[e.upKey], o.keys[e.downKey] = f, f
	return nil
}

func (o *Offloader) put(e *entry) error {
	m := o.l.Map(turnchannelMapRelays)
	if err := m.Put(e.upKey, e.up); err != nil {
		return fmt.Errorf("turnchannel: install flow: %w", err)
	}
	if err := m.Put(e.downKey, e.down); err != nil {
		return fmt.Errorf("turnchannel: install flow: %w", err)
	}
	return nil
}

// del deletes e's entries from the map.
func (o *Offloader) del(e *entry) error {
	var errs []error
	for _, k := range []relayKey{e.upKey, e.downKey} {
		if err := o.l.Map(turnchannelMapRelays).Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Remove uninstalls f; interfaces keep the program (it passes what the map
// does not hold) until Close.
func (o *Offloader) Remove(f turn.OffloadFlow) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	e := o.flows[f]
	if e == nil || o.l == nil {
		return nil
	}
	delete(o.flows, f)
	delete(o.keys, e.upKey)
	delete(o.keys, e.downKey)
	err := o.del(e)
	o.l.Release(e.up.Out.Slot, e.down.Out.Slot)
	if err != nil {
		return fmt.Errorf("turnchannel: remove flow: %w", err)
	}
	return nil
}

// Counters sums f's per-CPU counters.
func (o *Offloader) Counters(f turn.OffloadFlow) (toPeer, toClient turn.OffloadCounts, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	e := o.flows[f]
	if e == nil || o.l == nil {
		return toPeer, toClient, ErrClosed
	}
	up, err := o.l.Read(e.up.Out.Slot)
	if err != nil {
		return toPeer, toClient, err
	}
	down, err := o.l.Read(e.down.Out.Slot)
	if err != nil {
		return toPeer, toClient, err
	}
	return turn.OffloadCounts(up), turn.OffloadCounts(down), nil
}

// Flows returns the number of flows installed.
func (o *Offloader) Flows() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.flows)
}

// Attachments returns the interfaces the program is attached to and how.
func (o *Offloader) Attachments() map[int]kfast.Mode {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.l == nil {
		return map[int]kfast.Mode{}
	}
	return o.l.Attachments()
}

// Close detaches the program from every interface and frees the program
// and its maps. It is idempotent.
func (o *Offloader) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.l == nil {
		return nil
	}
	err := o.l.Close()
	o.l, o.flows, o.keys = nil, nil, nil
	return err
}
