package distribute

import "net/netip"

// Kernel is a data path below the socket layer (internal/kfast/distribution,
// a tc program) that the table is mirrored into. The user-space path stays
// in place behind it: what the kernel does not serve (RTCP, streams it
// cannot route, strangers) reaches the sockets and is handled there, so a
// packet is served by exactly one of them.
type Kernel interface {
	// Sync makes the kernel serve streams, as far as it can: a stream it
	// cannot serve (a receiver without a route or neighbour entry yet,
	// more receivers than it holds, IPv6, a wildcard address) is left to
	// user space. It is called with the table locked after every change,
	// so a change is in force in the kernel when the call that made it
	// returns, and again every ReapInterval to retry what could not be
	// served.
	Sync(streams []KernelStream) error
	// Counts returns what the kernel counted in slot (packets, payload
	// bytes, the unix ns of the last packet; 0 if none) since the slot
	// was first synced.
	Counts(slot uint32) (packets, bytes uint64, last int64)
	// Path names the path for logs and the path_info metric ("ebpf").
	Path() string
	Close() error
}

// KernelStream is one stream as Sync receives it; Slot and the receivers'
// slots index the kernel's counters.
type KernelStream struct {
	Key       StreamKey
	Source    netip.Addr
	Slot      uint32
	Receivers []KernelReceiver
}

// KernelReceiver is one receiver with its counter slot.
type KernelReceiver struct {
	Addr netip.AddrPort
	Slot uint32
}

// maxSlots bounds the counter slots (streams plus receivers) a kernel
// path holds.
const maxSlots = 1 << 16

// slotsLocked allocates counter slots; 0 is never used.
type slots struct {
	next uint32
	free []uint32
}

func (s *slots) get() uint32 {
	if n := len(s.free); n > 0 {
		v := s.free[n-1]
		s.free = s.free[:n-1]
		return v
	}
	s.next++
	return s.next
}

func (s *slots) put(v uint32) {
	if v != 0 {
		s.free = append(s.free, v)
	}
}

// kernelStreamsLocked is the table as Sync takes it.
func (t *Table) kernelStreamsLocked() []KernelStream {
	out := make([]KernelStream, 0, len(t.streams))
	for k, st := range t.streams {
		ks := KernelStream{Key: k, Source: st.source, Slot: st.st.slot, Receivers: make([]KernelReceiver, len(st.receivers))}
		for i, r := range st.receivers {
			ks.Receivers[i] = KernelReceiver{Addr: r.addr, Slot: r.slot}
		}
		out = append(out, ks)
	}
	return out
}

// syncLocked mirrors the table into the kernel path, if any.
func (t *Table) syncLocked() {
	if t.kernel == nil {
		return
	}
	if err := t.kernel.Sync(t.kernelStreamsLocked()); err != nil && t.syncErr != nil {
		t.syncErr(err)
	}
}

// Resync mirrors the table into the kernel path again (to serve what it
// could not before: a neighbour entry now resolved).
func (t *Table) Resync() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.syncLocked()
}
