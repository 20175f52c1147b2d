//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package mediaflow

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/traverse-rtc/traverse/internal/kfast"
	"github.com/traverse-rtc/traverse/internal/mediaproxy"
)

// The program and its map in internal/kfast/bpf/mediaflow.c.
const (
	program = "mediaflow"
	flowMap = "flows"
)

// Offloader forwards flows with the mediaflow tc program. It is safe for
// concurrent use.
type Offloader struct {
	*kfast.Table[mediaproxy.Flow, flow]
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
	if err := cfg.Validate(defaultMaxFlows); err != nil {
		return nil, err
	}
	t, err := kfast.NewTable[mediaproxy.Flow, flow](cfg, program, flowMap, mediaproxy.ErrClosed)
	if err != nil {
		return nil, fmt.Errorf("mediaflow: %w", err)
	}
	return &Offloader{t}, nil
}

// check returns f with every address as plain IPv4 (see kfast.V4).
func check(f mediaproxy.Flow) (mediaproxy.Flow, error) {
	var err error
	for _, p := range []*netip.AddrPort{&f.Client, &f.Fixed, &f.Inside, &f.Server, &f.ServerSrc} {
		if *p, err = kfast.V4(*p); err != nil {
			return f, err
		}
	}
	return f, nil
}

// egress returns the route the host sends dst out of, refusing local
// destinations (the program forwards between interfaces only) with
// kfast.ErrNoRoute.
func egress(l *kfast.Loader, dst netip.Addr) (kfast.Route, error) {
	r, err := l.Route(dst)
	if err == nil && r.Local {
		err = fmt.Errorf("%w: %v is local", kfast.ErrNoRoute, dst)
	}
	return r, err
}

// Offload installs both directions of f: client -> fixed port becomes
// inside port -> server, server -> inside port becomes fixed port -> client.
func (o *Offloader) Offload(orig mediaproxy.Flow) error {
	f, err := check(orig)
	if err != nil {
		return err
	}
	return o.With(func(l *kfast.Loader, flows map[mediaproxy.Flow]flow) error {
		if _, ok := flows[orig]; ok {
			return nil
		}
		e, err := install(l, f)
		if err == nil {
			flows[orig] = e
		}
		return err
	})
}

func install(l *kfast.Loader, f mediaproxy.Flow) (flow, error) {
	var e flow
	toClient, err := egress(l, f.Client.Addr())
	if err != nil {
		return e, err
	}
	toServer, err := egress(l, f.Server.Addr())
	if err != nil {
		return e, err
	}
	// Packets are expected on the interfaces their senders are routed
	// through (symmetric routing); any arriving elsewhere still reach user
	// space, which keeps forwarding them.
	fromServer, err := egress(l, f.ServerSrc.Addr())
	if err != nil {
		return e, err
	}
	if err := l.Attach(toClient.Ifindex, fromServer.Ifindex); err != nil {
		return e, fmt.Errorf("mediaflow: %w", err)
	}
	slots, err := l.Slots(2)
	if err != nil {
		return e, err
	}
	e = flow{kIn: kfast.TupleOf(f.Client, f.Fixed), kOut: kfast.TupleOf(f.ServerSrc, f.Inside),
		in: toServer.To(f.Inside, f.Server, slots[0], 0), out: toClient.To(f.Fixed, f.Client, slots[1], 0)}
	m := l.Map(flowMap)
	err = m.Update(e.kIn, e.in, ebpf.UpdateAny)
	if err == nil {
		if err = m.Update(e.kOut, e.out, ebpf.UpdateAny); err != nil {
			_ = m.Delete(e.kIn)
		}
	}
	if err != nil {
		l.Release(slots...)
		return e, fmt.Errorf("mediaflow: install flow: %w", err)
	}
	return e, nil
}

// Remove uninstalls f; the interfaces keep the program (it passes what the
// map does not hold) until Close.
func (o *Offloader) Remove(f mediaproxy.Flow) error {
	err := o.With(func(l *kfast.Loader, flows map[mediaproxy.Flow]flow) error {
		e, ok := flows[f]
		if !ok {
			return nil
		}
		delete(flows, f)
		var errs []error
		for _, k := range []kfast.Tuple{e.kIn, e.kOut} {
			if err := l.Map(flowMap).Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, err)
			}
		}
		l.Release(e.in.Slot, e.out.Slot)
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("mediaflow: remove flow: %w", err)
		}
		return nil
	})
	if errors.Is(err, mediaproxy.ErrClosed) {
		return nil
	}
	return err
}

// Stats returns the packets and bytes (IP length) the program forwarded
// for f, both directions.
func (o *Offloader) Stats(f mediaproxy.Flow) (packets, bytes uint64, err error) {
	err = o.With(func(l *kfast.Loader, flows map[mediaproxy.Flow]flow) error {
		e, ok := flows[f]
		if !ok {
			return mediaproxy.ErrNoSession
		}
		for _, s := range []uint32{e.in.Slot, e.out.Slot} {
			c, err := l.Read(s)
			if err != nil {
				return err
			}
			packets, bytes = packets+c.Packets, bytes+c.Bytes
		}
		return nil
	})
	if errors.Is(err, mediaproxy.ErrClosed) {
		err = mediaproxy.ErrNoSession
	}
	return packets, bytes, err
}
