//go:build linux

package tcattach

import (
	"errors"
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// Load reads a program's spec with load (a bpf2go loadX function), gives
// the maps named in sizes their maximum entries, loads it into objs (the
// matching bpf2go objects struct) and opens a netlink handle in network
// namespace ns (0: the current one). It also returns the number of
// possible CPUs, the length of a per-CPU map's values. On error nothing
// stays open.
func Load(ns int, load func() (*ebpf.CollectionSpec, error), sizes map[string]uint32, objs io.Closer) (nl *netlink.Handle, ncpu int, err error) {
	ncpu, err = ebpf.PossibleCPU()
	if err != nil {
		return nil, 0, fmt.Errorf("tcattach: %w", err)
	}
	spec, err := load()
	if err != nil {
		return nil, 0, fmt.Errorf("tcattach: %w", err)
	}
	for name, n := range sizes {
		m, ok := spec.Maps[name]
		if !ok {
			return nil, 0, fmt.Errorf("tcattach: program has no map %q", name)
		}
		m.MaxEntries = n
	}
	if err := spec.LoadAndAssign(objs, nil); err != nil {
		return nil, 0, fmt.Errorf("tcattach: load program: %w", err)
	}
	nl, err = Handle(ns)
	if err != nil {
		objs.Close()
		return nil, 0, fmt.Errorf("tcattach: netlink: %w", err)
	}
	return nl, ncpu, nil
}

// Set is one program on the ingress of every interface it was asked for,
// attached once each, until Close. It is not safe for concurrent use: the
// offloader that owns it guards it with its own lock.
type Set struct {
	ns          int
	nl          *netlink.Handle
	prog        *ebpf.Program
	forceClsact bool
	on          map[int]*Attachment // by interface index
}

// NewSet returns an empty set for prog; Attach takes ns, nl and
// forceClsact as Ingress does.
func NewSet(ns int, nl *netlink.Handle, prog *ebpf.Program, forceClsact bool) *Set {
	return &Set{ns: ns, nl: nl, prog: prog, forceClsact: forceClsact, on: map[int]*Attachment{}}
}

// Attach attaches the program to ifindex's ingress unless it is already
// there.
func (s *Set) Attach(ifindex int) error {
	if _, ok := s.on[ifindex]; ok {
		return nil
	}
	a, err := Ingress(s.ns, s.nl, ifindex, s.prog, s.forceClsact)
	if err != nil {
		return err
	}
	s.on[ifindex] = a
	return nil
}

// Modes returns the interfaces the program is attached to and how.
func (s *Set) Modes() map[int]Mode {
	r := make(map[int]Mode, len(s.on))
	for i, a := range s.on {
		r[i] = a.Mode
	}
	return r
}

// Close detaches the program from every interface; the set is empty
// afterwards.
func (s *Set) Close() error {
	var errs []error
	for i, a := range s.on {
		if err := a.Close(); err != nil {
			errs = append(errs, fmt.Errorf("tcattach: detach from interface %d: %w", i, err))
		}
	}
	clear(s.on)
	return errors.Join(errs...)
}
