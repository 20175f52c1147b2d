package distribute

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/traverse-rtc/traverse/internal/addrpolicy"
)

// StreamKey names a stream: the server address it arrives at and,
// optionally, its RTP SSRC (then several streams share one port, told
// apart by SSRC as the SIP gateway's media proxy does). A packet whose SSRC has no
// stream of its own goes to its port's stream without SSRC, if any.
type StreamKey struct {
	Dst     netip.AddrPort
	SSRC    uint32
	HasSSRC bool
}

func (k StreamKey) String() string {
	if k.HasSSRC {
		return fmt.Sprintf("%v ssrc %d", k.Dst, k.SSRC)
	}
	return k.Dst.String()
}

// Stream is a stream to add: its key, the only sender it accepts (Source;
// zero: any) and its first receivers.
type Stream struct {
	Key       StreamKey
	Source    netip.Addr
	Receivers []netip.AddrPort
}

// receiver is one destination of one stream. The data path updates its
// counters; it survives snapshots (only the lists holding it are copied).
type receiver struct {
	addr   netip.AddrPort
	stream StreamKey
	added  int64 // unix nanoseconds

	packets, bytes atomic.Uint64
	lastSent       atomic.Int64 // unix ns of the last packet sent to it
	lastHeard      atomic.Int64 // unix ns of its last RTCP
	unreachSince   atomic.Int64 // unix ns of the first ICMP unreachable not followed by RTCP; 0: none
	unreachable    atomic.Uint64
	slot           uint32 // kernel counter slot
}

// streamStats are a stream's counters, shared by its snapshots.
type streamStats struct {
	packets, bytes atomic.Uint64
	lastSeen       atomic.Int64
	slot           uint32 // kernel counter slot
}

// streamView is one stream in a snapshot: immutable.
type streamView struct {
	key       StreamKey
	source    netip.Addr
	receivers []*receiver
	st        *streamStats
}

// portView is what arrives at one listening socket.
type portView struct {
	bySSRC map[uint32]*streamView
	any    *streamView
	// receivers are the receivers fed from this port, by address: their
	// RTCP and ICMP errors come back here.
	receivers map[netip.AddrPort][]*receiver
}

// snapshot is the table as the data path sees it, indexed by listening
// socket. It is never changed once published.
type snapshot struct {
	ports []portView
}

// Table is the distribution table. Its methods are safe for concurrent
// use; the data path reads it through load without locking.
type Table struct {
	listen       []netip.AddrPort
	maxStreams   int
	maxReceivers int
	policy       *addrpolicy.Filter
	now          func() int64

	snap atomic.Pointer[snapshot]

	mu      sync.Mutex // guards streams, slots, and publishing snapshots
	streams map[StreamKey]*streamState
	slots   slots

	kernel  Kernel      // mirrored into after each change; nil: none
	syncErr func(error) // told of a failed Sync
}

// streamState is the authoritative state of one stream.
type streamState struct {
	source    netip.Addr
	receivers []*receiver
	st        *streamStats
	created   int64
}

func newTable(listen []netip.AddrPort, maxStreams, maxReceivers int, policy *addrpolicy.Filter) *Table {
	t := &Table{listen: listen, maxStreams: maxStreams, maxReceivers: maxReceivers, policy: policy,
		now: func() int64 { return time.Now().UnixNano() }, streams: map[StreamKey]*streamState{}}
	t.publishLocked()
	return t
}

// load returns the current snapshot.
func (t *Table) load() *snapshot { return t.snap.Load() }

// port returns the index of the listening socket a stream key names.
func (t *Table) port(k StreamKey) (int, bool) {
	d := netip.AddrPortFrom(k.Dst.Addr().Unmap(), k.Dst.Port())
	for i, a := range t.listen {
		if a == d {
			return i, true
		}
	}
	return 0, false
}

// Normalize returns k with an IPv4-mapped destination unmapped.
func (k StreamKey) normal() StreamKey {
	k.Dst = netip.AddrPortFrom(k.Dst.Addr().Unmap(), k.Dst.Port())
	if !k.HasSSRC {
		k.SSRC = 0
	}
	return k
}

func (t *Table) checkReceiver(a netip.AddrPort) (netip.AddrPort, error) {
	a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	if !a.IsValid() || a.Port() == 0 || a.Addr().IsMulticast() || a.Addr().IsUnspecified() || a.Addr().Zone() != "" {
		return a, fmt.Errorf("%w: %v", ErrBadReceiver, a)
	}
	if t.policy != nil && !t.policy.AllowedEndpoint(a) {
		return a, fmt.Errorf("%w: %v", ErrRefused, a)
	}
	return a, nil
}

// AddStream adds a stream with its first receivers.
func (t *Table) AddStream(s Stream) error {
	k := s.Key.normal()
	if _, ok := t.port(k); !ok {
		return fmt.Errorf("%w: %v is not a listening address (%v)", ErrBadStream, k.Dst, t.listen)
	}
	if len(s.Receivers) > t.maxReceivers {
		return fmt.Errorf("%w: %d receivers, at most %d per stream", ErrLimit, len(s.Receivers), t.maxReceivers)
	}
	now := t.now()
	st := &streamState{source: s.Source.Unmap(), st: &streamStats{}, created: now}
	// Slots are given under the lock, below.
	for _, a := range s.Receivers {
		a, err := t.checkReceiver(a)
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(st.receivers, func(r *receiver) bool { return r.addr == a }) {
			st.receivers = append(st.receivers, &receiver{addr: a, stream: k, added: now})
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.streams[k]; ok {
		return fmt.Errorf("%w: %v", ErrExists, k)
	}
	if len(t.streams) >= t.maxStreams {
		return fmt.Errorf("%w: %d streams", ErrLimit, t.maxStreams)
	}
	st.st.slot = t.slots.get()
	for _, r := range st.receivers {
		r.slot = t.slots.get()
	}
	t.streams[k] = st
	t.publishLocked()
	return nil
}

// RemoveStream removes a stream and its receivers.
func (t *Table) RemoveStream(k StreamKey) error {
	k = k.normal()
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.streams[k]
	if !ok {
		return fmt.Errorf("%w: stream %v", ErrNotFound, k)
	}
	delete(t.streams, k)
	t.slots.put(st.st.slot)
	for _, r := range st.receivers {
		t.slots.put(r.slot)
	}
	t.publishLocked()
	return nil
}

// AddReceiver adds a receiver to a stream; adding one it has is not an
// error (the counters go on).
func (t *Table) AddReceiver(k StreamKey, a netip.AddrPort) error {
	k = k.normal()
	a, err := t.checkReceiver(a)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.streams[k]
	if !ok {
		return fmt.Errorf("%w: stream %v", ErrNotFound, k)
	}
	if slices.ContainsFunc(st.receivers, func(r *receiver) bool { return r.addr == a }) {
		return nil
	}
	if len(st.receivers) >= t.maxReceivers {
		return fmt.Errorf("%w: %d receivers on stream %v", ErrLimit, t.maxReceivers, k)
	}
	// Copy on write: the data path may be reading the old slice.
	st.receivers = append(slices.Clip(st.receivers), &receiver{addr: a, stream: k, added: t.now(), slot: t.slots.get()})
	t.publishLocked()
	return nil
}

// RemoveReceiver removes a receiver from a stream.
func (t *Table) RemoveReceiver(k StreamKey, a netip.AddrPort) error {
	k = k.normal()
	a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.removeLocked(k, func(r *receiver) bool { return r.addr == a }) {
		return fmt.Errorf("%w: receiver %v of stream %v", ErrNotFound, a, k)
	}
	return nil
}

// removeLocked removes the receivers of stream k that match and
// publishes; it reports whether any did.
func (t *Table) removeLocked(k StreamKey, match func(*receiver) bool) bool {
	st, ok := t.streams[k]
	if !ok {
		return false
	}
	keep := make([]*receiver, 0, len(st.receivers))
	for _, r := range st.receivers {
		if !match(r) {
			keep = append(keep, r)
		} else {
			t.slots.put(r.slot)
		}
	}
	if len(keep) == len(st.receivers) {
		return false
	}
	st.receivers = keep
	t.publishLocked()
	return true
}

// publishLocked builds a snapshot from the authoritative state and makes
// it the data path's.
func (t *Table) publishLocked() {
	s := &snapshot{ports: make([]portView, len(t.listen))}
	for i := range s.ports {
		s.ports[i] = portView{bySSRC: map[uint32]*streamView{}, receivers: map[netip.AddrPort][]*receiver{}}
	}
	for k, st := range t.streams {
		i, _ := t.port(k)
		p := &s.ports[i]
		v := &streamView{key: k, source: st.source, receivers: st.receivers, st: st.st}
		if k.HasSSRC {
			p.bySSRC[k.SSRC] = v
		} else {
			p.any = v
		}
		for _, r := range st.receivers {
			p.receivers[r.addr] = append(p.receivers[r.addr], r)
		}
	}
	t.snap.Store(s)
	t.syncLocked()
}

// Removal is why a receiver was removed by Reap.
type Removal int

// Reasons for Reap's removals.
const (
	RemovedUnreachable Removal = iota // ICMP port unreachable, no RTCP since, for UnreachableTimeout
	RemovedSilent                     // no RTCP for RTCPTimeout
	numRemovals
)

var removalNames = [numRemovals]string{"unreachable", "rtcp_silence"}

func (r Removal) String() string { return removalNames[r] }

// Reap removes the receivers that stopped answering at time now (unix
// ns): unreachable for longer than unreach, or silent (no RTCP since
// added or last heard) for longer than silent; a timeout <= 0 is off. It
// calls removed for each, with the table unlocked.
func (t *Table) Reap(now int64, unreach, silent time.Duration, removed func(StreamKey, netip.AddrPort, Removal)) {
	type gone struct {
		k StreamKey
		a netip.AddrPort
		r Removal
	}
	var out []gone
	t.mu.Lock()
	for k, st := range t.streams {
		var reason Removal
		dead := func(r *receiver) bool {
			if u := r.unreachSince.Load(); unreach > 0 && u != 0 && now-u >= int64(unreach) {
				reason = RemovedUnreachable
				return true
			}
			if silent > 0 && now-max(r.lastHeard.Load(), r.added) >= int64(silent) {
				reason = RemovedSilent
				return true
			}
			return false
		}
		keep := st.receivers[:0:0]
		for _, r := range st.receivers {
			if dead(r) {
				out = append(out, gone{k, r.addr, reason})
				t.slots.put(r.slot)
				continue
			}
			keep = append(keep, r)
		}
		if len(keep) != len(st.receivers) {
			st.receivers = keep
		}
	}
	if len(out) > 0 {
		t.publishLocked()
	}
	t.mu.Unlock()
	for _, g := range out {
		removed(g.k, g.a, g.r)
	}
}

// ReceiverInfo is one receiver with its counters.
type ReceiverInfo struct {
	Addr        netip.AddrPort `json:"addr"`
	Packets     uint64         `json:"packets"`
	Bytes       uint64         `json:"bytes"`
	LastSent    time.Time      `json:"last_sent,omitzero"`
	LastHeard   time.Time      `json:"last_heard,omitzero"`
	Unreachable uint64         `json:"icmp_unreachable"`
}

// StreamInfo is one stream with its receivers and counters.
type StreamInfo struct {
	Dst       netip.AddrPort `json:"dst"`
	SSRC      *uint32        `json:"ssrc,omitempty"`
	Source    netip.Addr     `json:"source,omitzero"`
	Packets   uint64         `json:"packets"`
	Bytes     uint64         `json:"bytes"`
	LastSeen  time.Time      `json:"last_seen,omitzero"`
	Receivers []ReceiverInfo `json:"receivers"`
}

func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// Streams returns every stream with its counters, in key order.
func (t *Table) Streams() []StreamInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]StreamInfo, 0, len(t.streams))
	for k, st := range t.streams {
		si := StreamInfo{Dst: k.Dst, Source: st.source, Packets: st.st.packets.Load(), Bytes: st.st.bytes.Load(),
			LastSeen: unixTime(st.st.lastSeen.Load()), Receivers: make([]ReceiverInfo, 0, len(st.receivers))}
		si.Packets, si.Bytes, si.LastSeen = t.addKernel(st.st.slot, si.Packets, si.Bytes, si.LastSeen)
		if k.HasSSRC {
			s := k.SSRC
			si.SSRC = &s
		}
		for _, r := range st.receivers {
			ri := ReceiverInfo{Addr: r.addr, Packets: r.packets.Load(), Bytes: r.bytes.Load(),
				LastSent: unixTime(r.lastSent.Load()), LastHeard: unixTime(r.lastHeard.Load()), Unreachable: r.unreachable.Load()}
			ri.Packets, ri.Bytes, ri.LastSent = t.addKernel(r.slot, ri.Packets, ri.Bytes, ri.LastSent)
			si.Receivers = append(si.Receivers, ri)
		}
		out = append(out, si)
	}
	slices.SortFunc(out, func(a, b StreamInfo) int {
		if c := a.Dst.Compare(b.Dst); c != 0 {
			return c
		}
		var x, y int64 = -1, -1
		if a.SSRC != nil {
			x = int64(*a.SSRC)
		}
		if b.SSRC != nil {
			y = int64(*b.SSRC)
		}
		return int(min(max(x-y, -1), 1))
	})
	return out
}

// addKernel adds the kernel path's counts of slot.
func (t *Table) addKernel(slot uint32, packets, bytes uint64, last time.Time) (uint64, uint64, time.Time) {
	if t.kernel == nil {
		return packets, bytes, last
	}
	p, b, l := t.kernel.Counts(slot)
	if kl := unixTime(l); kl.After(last) {
		last = kl
	}
	return packets + p, bytes + b, last
}

// Counts returns the number of streams and receivers.
func (t *Table) Counts() (streams, receivers int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, st := range t.streams {
		receivers += len(st.receivers)
	}
	return len(t.streams), receivers
}
