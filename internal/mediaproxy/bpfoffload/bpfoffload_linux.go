//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpfoffload

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/traverse-rtc/traverse/internal/mediaproxy"
	"github.com/traverse-rtc/traverse/internal/tcattach"
)

// Offloader forwards flows with the fastpath tc program. It is safe for
// concurrent use.
type Offloader struct {
	cfg  Config
	ncpu int

	mu       sync.Mutex // guards everything below
	objs     *fastpathObjects
	nl       *netlink.Handle
	links    *tcattach.Set // the program on the interfaces flows arrive on
	flows    map[mediaproxy.Flow]struct{}
	counters map[fastpathFlowKey][2]uint64 // packets, bytes (all CPUs)
	readAt   time.Time
}

var _ mediaproxy.Offloader = (*Offloader)(nil)

// New loads the program and creates the flow map. Nothing is attached
// until the first flow arrives on an interface.
func New(cfg Config) (*Offloader, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	objs := new(fastpathObjects)
	nl, ncpu, err := tcattach.Load(cfg.NetNS, loadFastpath, map[string]uint32{fastpathMapFlows: uint32(2 * cfg.MaxFlows)}, objs)
	if err != nil {
		return nil, fmt.Errorf("bpfoffload: %w", err)
	}
	return &Offloader{cfg: cfg, ncpu: ncpu, objs: objs, nl: nl,
		links: tcattach.NewSet(cfg.NetNS, nl, objs.FastpathIngress, false), flows: map[mediaproxy.Flow]struct{}{}}, nil
}

func check(f mediaproxy.Flow) error {
	for _, ap := range []netip.AddrPort{f.Client, f.Fixed, f.Inside, f.Server, f.ServerSrc} {
		if !ap.Addr().Is4() || ap.Addr().IsUnspecified() {
			return fmt.Errorf("%w: %v", ErrNotIPv4, ap)
		}
	}
	return nil
}

func key(src, dst netip.AddrPort) fastpathFlowKey {
	return fastpathFlowKey{Saddr: be32(src.Addr()), Daddr: be32(dst.Addr()), Sport: be16(src.Port()), Dport: be16(dst.Port())}
}

// be32 and be16: see tcattach.BE32.
var (
	be32 = tcattach.BE32
	be16 = tcattach.BE16
)

// egress returns the interface the host routes dst out of, refusing local
// and non-Ethernet destinations (the program assumes a 14-byte header).
func (o *Offloader) egress(dst netip.Addr) (int, error) {
	r, err := tcattach.Lookup(o.nl, dst)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrNoRoute, err)
	}
	if r.Local {
		return 0, fmt.Errorf("%w: %v is local", ErrNoRoute, dst)
	}
	return r.Ifindex, nil
}

func (o *Offloader) value(src, dst netip.AddrPort, ifindex int) []fastpathFlowValue {
	v := fastpathFlowValue{Saddr: be32(src.Addr()), Daddr: be32(dst.Addr()), Sport: be16(src.Port()), Dport: be16(dst.Port()), Ifindex: uint32(ifindex)}
	vs := make([]fastpathFlowValue, o.ncpu)
	for i := range vs {
		vs[i] = v
	}
	return vs
}

// Offload installs both directions of f: client -> fixed port becomes
// inside port -> server, server -> inside port becomes fixed port -> client.
func (o *Offloader) Offload(f mediaproxy.Flow) error {
	if err := check(f); err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.objs == nil {
		return mediaproxy.ErrClosed
	}
	if _, ok := o.flows[f]; ok {
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
	for _, i := range []int{toClient, fromServer} {
		// In the configured network namespace: with TCX, or a clsact
		// filter on kernels without it.
		if err := o.links.Attach(i); err != nil {
			return fmt.Errorf("bpfoffload: %w", err)
		}
	}
	m := o.objs.Flows
	kIn, kOut := key(f.Client, f.Fixed), key(f.ServerSrc, f.Inside)
	if err := m.Update(kIn, o.value(f.Inside, f.Server, toServer), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("bpfoffload: install flow: %w", err)
	}
	if err := m.Update(kOut, o.value(f.Fixed, f.Client, toClient), ebpf.UpdateAny); err != nil {
		_ = m.Delete(kIn)
		return fmt.Errorf("bpfoffload: install flow: %w", err)
	}
	o.flows[f] = struct{}{}
	return nil
}

// Remove uninstalls f; the interfaces keep the program (it passes what the
// map does not hold) until Close.
func (o *Offloader) Remove(f mediaproxy.Flow) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.flows[f]; !ok {
		return nil
	}
	delete(o.flows, f)
	var errs []error
	for _, k := range []fastpathFlowKey{key(f.Client, f.Fixed), key(f.ServerSrc, f.Inside)} {
		if err := o.objs.Flows.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
		delete(o.counters, k)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bpfoffload: remove flow: %w", err)
	}
	return nil
}

// Stats returns the packets and bytes (IP length) the program forwarded
// for f, both directions. One walk of the map serves every call within
// StatsMaxAge.
func (o *Offloader) Stats(f mediaproxy.Flow) (packets, bytes uint64, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.flows[f]; !ok || o.objs == nil {
		return 0, 0, mediaproxy.ErrNoSession
	}
	if o.counters == nil || time.Since(o.readAt) > o.cfg.StatsMaxAge {
		m := make(map[fastpathFlowKey][2]uint64, 2*len(o.flows))
		var k fastpathFlowKey
		var vs []fastpathFlowValue
		it := o.objs.Flows.Iterate()
		for it.Next(&k, &vs) {
			var c [2]uint64
			for _, v := range vs {
				c[0] += v.Packets
				c[1] += v.Bytes
			}
			m[k] = c
		}
		if err := it.Err(); err != nil {
			return 0, 0, fmt.Errorf("bpfoffload: read counters: %w", err)
		}
		o.counters, o.readAt = m, time.Now()
	}
	a, b := o.counters[key(f.Client, f.Fixed)], o.counters[key(f.ServerSrc, f.Inside)]
	return a[0] + b[0], a[1] + b[1], nil
}

// Flows returns the number of flows installed.
func (o *Offloader) Flows() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.flows)
}

// Interfaces returns the indexes of the interfaces the program is attached to.
func (o *Offloader) Interfaces() []int {
	o.mu.Lock()
	defer o.mu.Unlock()
	var r []int
	if o.links == nil {
		return r
	}
	for i := range o.links.Modes() {
		r = append(r, i)
	}
	return r
}

// Close detaches the program from every interface and frees the program
// and the map. It is idempotent.
func (o *Offloader) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.objs == nil {
		return nil
	}
	err := errors.Join(o.links.Close(), o.objs.Close())
	o.nl.Close()
	o.objs, o.links, o.flows, o.counters = nil, nil, nil, nil
	return err
}
