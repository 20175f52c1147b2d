package relay

import (
	"encoding/binary"
	"sync"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
)

// End-to-end duplicate suppression (docs/relay-protocol.md, "Duplicates").
//
// A track reaches a node by its distribution tree. When the tree changes,
// the nodes apply the controller's commands at slightly different moments,
// so for a while a node may be fed by its old parent and its new one: the
// same media message (same source node, track, layer and sequence number)
// arrives twice, over different links, where the links' replay windows
// cannot see it. Each node keeps, per (source node, room, publisher,
// track, layer) it is a destination of, a window of the sequence numbers
// it accepted, and drops (counted, reason "duplicate") a message it has
// accepted already: not handed to the SFU, not forwarded on by a holder.

const (
	// seqRingWords is the window's bitmap: 16 words of 64 sequence
	// numbers, the ring scheme of RFC 6479 (WireGuard's replay window).
	seqRingWords = 16
	// SeqWindow is how far below the highest sequence number accepted a
	// message is still checked against the bitmap (one word of the ring
	// is the one being filled).
	SeqWindow = (seqRingWords - 1) * 64
	// MaxSeqStreams bounds the windows a node keeps: beyond it a new
	// stream's messages pass unchecked (counted, seq_untracked).
	MaxSeqStreams = 1 << 14
	// SeqIdle is how long a window without messages is kept: a stream
	// that stopped (its track ended, or the tree no longer sends it here)
	// is forgotten after it.
	SeqIdle = 10 * time.Second
)

// seqVerdict is what a window says of a sequence number.
type seqVerdict uint8

const (
	seqNew   seqVerdict = iota // not seen: accepted, recorded
	seqDup                     // accepted already: drop
	seqReset                   // far behind the window: the source restarted, window restarted at it, accepted
)

// seqWindow is one stream's window: the highest sequence number accepted
// and a ring bitmap of the SeqWindow numbers below it. Comparisons are
// serial number arithmetic (RFC 1982) on 32 bits, so the window works
// across the wrap from 2^32-1 to 0.
type seqWindow struct {
	top  uint32
	ring [seqRingWords]uint64
	used bool
	last int64 // unix nanoseconds of the last message, for the idle sweep
}

// check records seq and says whether it is new, a duplicate or a restart.
//
// The rule: a number above the highest (by serial arithmetic: less than
// 2^31 ahead) moves the window up; one within SeqWindow below it is
// checked against the bitmap; one more than SeqWindow below it is taken
// for a restarted source (a node whose counter began again, or a track
// whose sending stopped and resumed): the window starts again at it, and
// it is accepted. A copy delayed by more than SeqWindow messages cannot
// be told from a restart; the tree changes this guards against delay a
// copy by a link's latency, a few dozen messages at most.
func (w *seqWindow) check(seq uint32) seqVerdict {
	v := seqNew
	d := int32(seq - w.top)
	switch {
	case !w.used:
		w.reset(seq)
	case d > 0:
		// word numbers run 0..2^26-1 and wrap with the sequence
		steps := ((seq >> 6) - (w.top >> 6)) & (1<<26 - 1)
		if steps > seqRingWords {
			steps = seqRingWords
		}
		for i := uint32(1); i <= steps; i++ {
			w.ring[((w.top>>6)+i)%seqRingWords] = 0
		}
		w.top = seq
	case d <= -SeqWindow:
		w.reset(seq)
		v = seqReset
	}
	i, bit := (seq>>6)%seqRingWords, uint64(1)<<(seq&63)
	if w.ring[i]&bit != 0 {
		return seqDup
	}
	w.ring[i] |= bit
	return v
}

func (w *seqWindow) reset(seq uint32) {
	w.ring = [seqRingWords]uint64{}
	w.top, w.used = seq, true
}

// seqKeyLen is the longest window key: source, layer and the names.
const seqKeyLen = 4 + 1 + 3*relaywire.MaxName + 2

// seqKey is a window's map key: the source node, the layer, then the
// names as forwardKey joins them, built into b.
func seqKey[S ~string | ~[]byte](b []byte, src NodeID, layer uint8, room, publisher, track S) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(src))
	b = append(b, layer)
	return forwardKey(b, room, publisher, track)
}

// seqWindows are a node's windows. Only the reader loop checks messages;
// the timers sweep idle windows and Forget removes a track's, hence the
// lock (uncontended on the message path).
type seqWindows struct {
	mu sync.Mutex
	m  map[string]*seqWindow
}

// check looks up (making it on first use) the window of h's stream and
// checks h's sequence number; full says the window could not be made
// (MaxSeqStreams), and the message passes.
func (ws *seqWindows) check(h *relaywire.Header, now time.Time) (v seqVerdict, full bool) {
	var kb [seqKeyLen]byte
	k := seqKey(kb[:0], h.Source, h.Layer, h.Room, h.Publisher, h.Track)
	ws.mu.Lock()
	defer ws.mu.Unlock()
	w := ws.m[string(k)]
	if w == nil {
		if len(ws.m) >= MaxSeqStreams {
			return seqNew, true
		}
		if ws.m == nil {
			ws.m = map[string]*seqWindow{}
		}
		w = &seqWindow{}
		ws.m[string(k)] = w
	}
	w.last = now.UnixNano()
	return w.check(h.Seq), false
}

// sweep removes the windows idle since before cutoff.
func (ws *seqWindows) sweep(cutoff time.Time) {
	c := cutoff.UnixNano()
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for k, w := range ws.m {
		if w.last < c {
			delete(ws.m, k)
		}
	}
}

// forget removes every window of the track named by names (forwardKey),
// of any source and layer.
func (ws *seqWindows) forget(names string) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for k := range ws.m {
		if k[5:] == names {
			delete(ws.m, k)
		}
	}
}

// len is the windows held (tests, diagnostics).
func (ws *seqWindows) len() int {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return len(ws.m)
}

// ForgetTrack drops this node's duplicate windows of the remote track k
// (its SFU removed the track): a track's state goes with it, rather than
// after SeqIdle.
func (e *Endpoint) ForgetTrack(k StreamKey) {
	e.seqs.forget(string(forwardKey(nil, k.Room, k.Publisher, k.Track)))
}

// duplicate checks a media message addressed to this node against its
// stream's window, counting what it finds; true: drop it.
func (e *Endpoint) duplicate(h *relaywire.Header, now time.Time) bool {
	v, full := e.seqs.check(h, now)
	switch {
	case full:
		e.m.seqUntracked.Inc()
	case v == seqDup:
		e.m.drops[dropDuplicate].Inc()
		return true
	case v == seqReset:
		e.m.seqResets.Inc()
	}
	return false
}

// seqStart is where a track's numbering starts: the clock in units of
// 2^17 ns (131 us, 7,629 a second), so that numbering begun again after a
// pause starts above the last run unless that run sent faster than 7,629
// messages a second all along. It wraps every 6.5 days, which the
// windows' serial arithmetic and restart rule absorb.
func seqStart(now time.Time) uint32 { return uint32(now.UnixNano() >> 17) }
