//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package stunanswer

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/traverse-rtc/traverse/internal/kfast"
)

const (
	program  = "stunanswer"
	addrsMap = "stun_addrs"
	rateMap  = "stun_rate"
	maxAddrs = 4
)

// key is bpf/stunanswer.c's struct stun_key.
type key struct {
	Addr     uint32
	Port     uint16
	Padding_ uint16
}

// value is struct stun_value.
type value struct {
	Slot      uint32
	RFC5780   uint32
	OtherAddr uint32
	OtherPort uint16
	Padding_  uint16
	Interval  uint64
	Tolerance uint64
}

// Answerer is the loaded, attached program. Its methods are safe for
// concurrent use (the loader is only read after New).
type Answerer struct {
	l     *kfast.Loader
	slots []uint32
}

// New loads the program with cfg's endpoints and attaches it.
func New(cfg Config) (*Answerer, error) {
	if len(cfg.Endpoints) == 0 || len(cfg.Endpoints) > maxAddrs {
		return nil, fmt.Errorf("%w: %d endpoints (1 to %d)", kfast.ErrConfig, len(cfg.Endpoints), maxAddrs)
	}
	l, err := kfast.Load(kfast.Config{NetNS: cfg.NetNS, Clsact: cfg.Clsact, Program: program,
		Maps: map[string]uint32{addrsMap: maxAddrs, rateMap: rateSources}, Slots: maxAddrs})
	if err != nil {
		return nil, fmt.Errorf("stunanswer: %w", err)
	}
	a := &Answerer{l: l}
	if err := a.install(cfg.Endpoints, cfg.Rate, cfg.Burst); err != nil {
		l.Close()
		return nil, err
	}
	if !cfg.NoAttach {
		if err := l.AttachInterfaces(cfg.Interfaces); err != nil {
			l.Close()
			return nil, fmt.Errorf("stunanswer: %w", err)
		}
	}
	return a, nil
}

func (a *Answerer) install(eps []Endpoint, rate, burst int) error {
	var interval, tolerance uint64
	if rate > 0 {
		interval = uint64(time.Second) / uint64(rate)
		tolerance = uint64(max(burst, 1)-1) * interval
	}
	slots, err := a.l.Slots(len(eps))
	if err != nil {
		return fmt.Errorf("stunanswer: %w", err)
	}
	a.slots = slots
	for i, ep := range eps {
		addr := ep.Addr.Addr().Unmap()
		if !addr.Is4() || ep.Addr.Port() == 0 {
			return fmt.Errorf("%w: %v", kfast.ErrNotIPv4, ep.Addr)
		}
		t := kfast.TupleOf(netip.AddrPortFrom(addr, ep.Addr.Port()), ep.Addr)
		v := value{Slot: slots[i], Interval: interval, Tolerance: tolerance}
		if ep.Other.IsValid() {
			o, err := kfast.V4(ep.Other)
			if err != nil {
				return err
			}
			ot := kfast.TupleOf(o, o)
			v.RFC5780, v.OtherAddr, v.OtherPort = 1, ot.Saddr, ot.Sport
		}
		if err := a.l.Map(addrsMap).Put(key{Addr: t.Saddr, Port: t.Sport}, v); err != nil {
			return fmt.Errorf("stunanswer: %w", err)
		}
	}
	return nil
}

// Program is the loaded program (BPF_PROG_TEST_RUN in tests).
func (a *Answerer) Program() *ebpf.Program { return a.l.Program() }

// Answered returns the answers the kernel sent and their STUN bytes, over
// every endpoint.
func (a *Answerer) Answered() (kfast.Counts, error) {
	var c kfast.Counts
	for _, s := range a.slots {
		n, err := a.l.Read(s)
		if err != nil {
			return c, err
		}
		c.Packets += n.Packets
		c.Bytes += n.Bytes
	}
	return c, nil
}

// Modes returns how the program is attached, by interface index.
func (a *Answerer) Modes() map[int]kfast.Mode { return a.l.Attachments() }

// Close detaches the program and frees it.
func (a *Answerer) Close() error { return a.l.Close() }
