//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package kfast

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Loader is one loaded tc program with its maps: it sizes them, attaches
// the program to the ingress of each interface on first use (TCX, or a
// clsact filter where the kernel lacks TCX or Config.Clsact is set), hands
// out counter slots and reads them, and detaches and frees everything on
// Close. It is not safe for concurrent use: the offloader that owns it
// guards it with its own lock.
type Loader struct {
	cfg  Config
	ncpu int
	coll *ebpf.Collection
	prog *ebpf.Program
	nl   *netlink.Handle
	on   map[int]*attachment // by interface index
	free []uint32            // counter slots, the next one last
	zero []Counts            // one per CPU
}

// Load loads cfg.Program from the one object of bpf/ with the maps it
// uses (and no others), sized by cfg, and opens a netlink handle in
// cfg.NetNS. Nothing is attached yet. On error nothing stays open.
func Load(cfg Config) (*Loader, error) {
	if cfg.Slots < 1 || cfg.Slots > 1<<24 {
		return nil, fmt.Errorf("%w: %d counter slots", ErrConfig, cfg.Slots)
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("kfast: %w", err)
	}
	spec, err := loadKfast()
	if err != nil {
		return nil, fmt.Errorf("kfast: %w", err)
	}
	if err := only(spec, cfg.Program); err != nil {
		return nil, err
	}
	sizes := map[string]uint32{CountersMap: uint32(cfg.Slots)}
	for name, n := range cfg.Maps {
		sizes[name] = n
	}
	for name, n := range sizes {
		m, ok := spec.Maps[name]
		if !ok {
			return nil, fmt.Errorf("%w: program %s has no map %q", ErrConfig, cfg.Program, name)
		}
		m.MaxEntries = n
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, fmt.Errorf("kfast: load program: %w", err)
	}
	nl, err := handle(cfg.NetNS)
	if err != nil {
		coll.Close()
		return nil, fmt.Errorf("kfast: netlink: %w", err)
	}
	l := &Loader{cfg: cfg, ncpu: ncpu, coll: coll, prog: coll.Programs[cfg.Program], nl: nl,
		on: map[int]*attachment{}, free: make([]uint32, cfg.Slots), zero: make([]Counts, ncpu)}
	for i := range l.free {
		l.free[i] = uint32(cfg.Slots - 1 - i)
	}
	return l, nil
}

// only trims spec to the program name and the maps it uses, so that a
// loader creates no other program's maps.
func only(spec *ebpf.CollectionSpec, name string) error {
	ps, ok := spec.Programs[name]
	if !ok {
		return fmt.Errorf("%w: no program %q", ErrConfig, name)
	}
	used := map[string]bool{}
	for _, ins := range ps.Instructions {
		if ins.IsLoadFromMap() {
			used[ins.Reference()] = true
		}
	}
	for m := range spec.Maps {
		if !used[m] {
			delete(spec.Maps, m)
		}
	}
	spec.Programs = map[string]*ebpf.ProgramSpec{name: ps}
	return nil
}

// Program is the loaded program (for BPF_PROG_TEST_RUN in tests).
func (l *Loader) Program() *ebpf.Program { return l.prog }

// Map returns the program's map called name (nil if it has none).
func (l *Loader) Map(name string) *ebpf.Map { return l.coll.Maps[name] }

// Route returns where the host sends packets for dst, in the loader's
// network namespace: a local address, or an Ethernet device (the programs
// assume a 14-byte header). Anything else is ErrNoRoute.
func (l *Loader) Route(dst netip.Addr) (Route, error) { return lookup(l.nl, dst) }

// Attach attaches the program to the ingress of each interface it is not
// on yet.
func (l *Loader) Attach(ifindexes ...int) error {
	for _, i := range ifindexes {
		if _, ok := l.on[i]; ok {
			continue
		}
		a, err := ingress(l.cfg.NetNS, l.nl, i, l.prog, l.cfg.Clsact)
		if err != nil {
			return err
		}
		l.on[i] = a
	}
	return nil
}

// Attachments returns the interfaces the program is attached to and how.
func (l *Loader) Attachments() map[int]Mode {
	r := make(map[int]Mode, len(l.on))
	for i, a := range l.on {
		r[i] = a.Mode
	}
	return r
}

// Slots takes n free counter slots, each zeroed on every CPU: all of
// them, or none and ErrFull when fewer are left.
func (l *Loader) Slots(n int) ([]uint32, error) {
	if len(l.free) < n {
		return nil, ErrFull
	}
	got := make([]uint32, 0, n)
	for range n {
		s := l.free[len(l.free)-1]
		if err := l.coll.Maps[CountersMap].Put(s, l.zero); err != nil {
			l.Release(got...)
			return nil, fmt.Errorf("kfast: reset counters: %w", err)
		}
		l.free = l.free[:len(l.free)-1]
		got = append(got, s)
	}
	return got, nil
}

// Release gives counter slots back. The program may still count into one
// until the entries naming it are gone: delete those first.
func (l *Loader) Release(slots ...uint32) { l.free = append(l.free, slots...) }

// FreeSlots is the number of counter slots not in use.
func (l *Loader) FreeSlots() int { return len(l.free) }

// Read sums a counter slot over every CPU.
func (l *Loader) Read(slot uint32) (Counts, error) {
	var vs []Counts
	if err := l.coll.Maps[CountersMap].Lookup(slot, &vs); err != nil {
		return Counts{}, fmt.Errorf("kfast: read counters: %w", err)
	}
	var c Counts
	for _, v := range vs {
		c.Packets += v.Packets
		c.Bytes += v.Bytes
	}
	return c, nil
}

// Close detaches the program from every interface and frees the program
// and its maps.
func (l *Loader) Close() error {
	var errs []error
	for i, a := range l.on {
		if err := a.Close(); err != nil {
			errs = append(errs, fmt.Errorf("kfast: detach from interface %d: %w", i, err))
		}
	}
	clear(l.on)
	l.coll.Close()
	l.nl.Close()
	return errors.Join(errs...)
}

// Deadline converts t to CLOCK_MONOTONIC nanoseconds, the programs' clock
// (bpf_ktime_get_ns) for Out.Deadline; a time already past gives now.
func Deadline(t time.Time) uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	d := time.Until(t)
	if d < 0 {
		d = 0
	}
	return uint64(ts.Nano()) + uint64(d)
}
