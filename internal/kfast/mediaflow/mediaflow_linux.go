//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package mediaflow

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/traverse-rtc/traverse/internal/kfast"
	"github.com/traverse-rtc/traverse/internal/mediaproxy"
)

// Offloader forwards flows with the mediaflow tc program. It is safe for
// concurrent use.
type Offloader struct {
	mu    sync.Mutex // guards everything below
	l     *kfast.Loader
	flows map[mediaproxy.Flow]flow
}

// flow is an installed flow's two entries: client -> fixed port (in) and
// server -> inside port (out).
type flow struct {
	kIn, kOut kfast.Tuple
	in, out   kfast.Out
}

var _ mediaproxy.Offloader = (*Offloader)(nil)

// New loads the program and creates the flow map. Nothing is attached
// until the first flow arrives on an interface.
func New(cfg Config) (*Offloader, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	l, err := kfast.Load(loaderConfig(cfg), loadMediaflow)
	if err != nil {
		return nil, fmt.Errorf("mediaflow: %w", err)
	}
	return &Offloader{l: l, flows: map[mediaproxy.Flow]flow{}}, nil
}

func loaderConfig(cfg Config) kfast.Config {
	return kfast.Config{NetNS: cfg.NetNS, Clsact: cfg.Clsact, Program: mediaflowProgMediaflow,
		Maps: map[string]uint32{mediaflowMapFlows: uint32(2 * cfg.MaxFlows)}, Slots: 2 * cfg.MaxFlows}
}

// check returns f with every address as plain IPv4 (see kfast.V4).
func check(f mediaproxy.Flow) (mediaproxy.Flow, error) {
	var err error
	for _, p := range []*netip.AddrPort{&f.Client, &f.Fixed, &f.Inside, &f.Server, &f.ServerSrc} {
		if *p, err = kfast.V4(*p); err != nil {
			return f, fmt.Errorf("%w: %w", ErrNotIPv4, err)
		}
	}
	return f, nil
}

// egress returns the route the host sends dst out of, refusing local
// destinations (the program forwards between interfaces only).
func (o *Offloader) egress(dst netip.Addr) (kfast.Route, error) {
	r, err := o.l.Route(dst)
	if err != nil {
		return r, fmt.Errorf("%w: %w", ErrNoRoute, err)
	}
	if r.Local {
		return r, fmt.Errorf("%w: %v is local", ErrNoRoute, dst)
	}
	return r, nil
}

// Offload installs both directions of f: client -> fixed port becomes
// inside port -> server, server -> inside port becomes fixed port -> client.
func (o *Offloader) Offload(orig mediaproxy.Flow) error {
	f, err := check(orig)
	if err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.l == nil {
		return mediaproxy.ErrClosed
	}
	if _, ok := o.flows[orig]; ok {
		return nil
	}
	toClient, err := o.egress(f.Client.Addr())
	if err != nil {
		return err
	}
	toServer, err := o.egress(f.Server.Addr())
	if err != nil {
		return err
	}
	// Packets are expected on the interfaces their senders are routed
	// through (symmetric routing); any arriving elsewhere still reach user
	// space, which keeps forwarding them.
	fromServer, err := o.egress(f.ServerSrc.Addr())
	if err != nil {
		return err
	}
	if err := o.l.Attach(toClient.Ifindex, fromServer.Ifindex); err != nil {
		return fmt.Errorf("mediaflow: %w", err)
	}
	e := flow{kIn: kfast.TupleOf(f.Client, f.Fixed), kOut: kfast.TupleOf(f.ServerSrc, f.Inside)}
	slots, err := o.l.Slots(2)
	if err != nil {
		return err
	}
	sIn, sOut := slots[0], slots[1]
	e.in, e.out = toServer.To(f.Inside, f.Server, sIn, 0), toClient.To(f.Fixed, f.Client, sOut, 0)
	m := o.l.Map(mediaflowMapFlows)
	if err := m.Update(e.kIn, e.in, ebpf.UpdateAny); err != nil {
		o.l.Release(sIn, sOut)
		return fmt.Errorf("mediaflow: install flow: %w", err)
	}
	if err := m.Update(e.kOut, e.out, ebpf.UpdateAny); err != nil {
		_ = m.Delete(e.kIn)
		o.l.Release(sIn, sOut)
		return fmt.Errorf("mediaflow: install flow: %w", err)
	}
	o.flows[orig] = e
	return nil
}

// Remove uninstalls f; the interfaces keep the program (it passes what the
// map does not hold) until Close.
func (o *Offloader) Remove(f mediaproxy.Flow) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	e, ok := o.flows[f]
	if !ok {
		return nil
	}
	delete(o.flows, f)
	var errs []error
	for _, k := range []kfast.Tuple{e.kIn, e.kOut} {
		if err := o.l.Map(mediaflowMapFlows).Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	o.l.Release(e.in.Slot, e.out.Slot)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("mediaflow: remove flow: %w", err)
	}
	return nil
}

// Stats returns the packets and bytes (IP length) the program forwarded
// for f, both directions.
func (o *Offloader) Stats(f mediaproxy.Flow) (packets, bytes uint64, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	e, ok := o.flows[f]
	if !ok || o.l == nil {
		return 0, 0, mediaproxy.ErrNoSession
	}
	a, err := o.l.Read(e.in.Slot)
	if err != nil {
		return 0, 0, err
	}
	b, err := o.l.Read(e.out.Slot)
	if err != nil {
		return 0, 0, err
	}
	return a.Packets + b.Packets, a.Bytes + b.Bytes, nil
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
// and the map. It is idempotent.
func (o *Offloader) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.l == nil {
		return nil
	}
	err := o.l.Close()
	o.l, o.flows = nil, nil
	return err
}
