//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package kfast

import "sync"

// Table is what every offloader holds: its Loader behind one lock, and
// the flows it installed, by the owner's flow type F, each with what the
// offloader keeps of it (E). It is safe for concurrent use; an offloader
// embeds it for Flows, Attachments and Close.
type Table[F comparable, E any] struct {
	mu     sync.Mutex // guards everything below
	l      *Loader
	flows  map[F]E
	closed error
}

// NewTable loads program (see Load) for an offloader configured with cfg,
// with its own map sized 2 x MaxFlows and 2 x MaxFlows counter slots (two
// entries and two slots a flow). closed is what With returns after Close.
func NewTable[F comparable, E any](cfg FlowConfig, program, flowMap string, closed error) (*Table[F, E], error) {
	l, err := Load(Config{NetNS: cfg.NetNS, Clsact: cfg.Clsact, Program: program,
		Maps: map[string]uint32{flowMap: uint32(2 * cfg.MaxFlows)}, Slots: 2 * cfg.MaxFlows})
	if err != nil {
		return nil, err
	}
	return &Table[F, E]{l: l, flows: map[F]E{}, closed: closed}, nil
}

// With runs f with the loader and the flows under the table's lock; after
// Close it returns the table's closed error instead.
func (t *Table[F, E]) With(f func(l *Loader, flows map[F]E) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.l == nil {
		return t.closed
	}
	return f(t.l, t.flows)
}

// Flows returns the number of flows installed.
func (t *Table[F, E]) Flows() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.flows)
}

// Attachments returns the interfaces the program is attached to and how.
func (t *Table[F, E]) Attachments() map[int]Mode {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.l == nil {
		return map[int]Mode{}
	}
	return t.l.Attachments()
}

// Close detaches the program from every interface and frees the program
// and its maps. It is idempotent.
func (t *Table[F, E]) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.l == nil {
		return nil
	}
	err := t.l.Close()
	t.l, t.flows = nil, nil
	return err
}
