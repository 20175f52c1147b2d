package loadgen

import (
	"sync/atomic"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// RecvStats are one received track's counters. Read them with the
// methods; they are updated concurrently.
type RecvStats struct {
	Kind  string
	clock uint32

	packets atomic.Uint64
	bytes   atomic.Uint64
	lost    atomic.Uint64
	late    atomic.Uint64 // packets older than the newest seen (retransmissions, reordering)
	repair  atomic.Uint64 // late packets that filled a gap counted in lost
	lastSeq atomic.Uint32
	layer   atomic.Int32  // the simulcast layer of the last video packet
	jitter  atomic.Uint64 // RFC 3550 interarrival jitter, in microseconds
	// firstAt and lastAt are when the first and the latest packet arrived
	// (Unix nanoseconds; 0 before): a rejoin's media gap is measured from
	// them.
	firstAt, lastAt atomic.Int64
	// onVideo is ClientConfig.OnVideo for a video track.
	onVideo func(payload []byte, at time.Time)
}

// recvWindow is how many sequence numbers back a late packet (a NACKed
// retransmission, a reordered packet) still takes its gap out of lost.
const recvWindow = 1024

func (s *RecvStats) read(t *webrtc.TrackRemote) {
	buf := make([]byte, 1600)
	var h rtp.Header
	started := false
	var transit float64
	var j float64
	var seqs seqState
	for {
		n, _, err := t.Read(buf)
		if err != nil {
			return
		}
		hn, err := h.Unmarshal(buf[:n])
		if err != nil {
			continue
		}
		now := time.Now()
		s.lastAt.Store(now.UnixNano())
		s.firstAt.CompareAndSwap(0, now.UnixNano())
		s.packets.Add(1)
		s.bytes.Add(uint64(n))
		if s.Kind == "video" && n-hn > 2 {
			s.layer.Store(int32(buf[hn+2]))
		}
		if s.onVideo != nil {
			s.onVideo(buf[hn:n], now)
		}
		inOrder := seqs.add(s, h.SequenceNumber)
		// Jitter is over in-order packets only, as libwebrtc's: a NACKed
		// retransmission carries its old timestamp and would count a
		// round trip as jitter.
		if s.clock > 0 && inOrder {
			arrival := float64(now.UnixNano()) / 1e9 * float64(s.clock)
			tr := arrival - float64(h.Timestamp)
			if started {
				d := tr - transit
				if d < 0 {
					d = -d
				}
				j += (d - j) / 16
				s.jitter.Store(uint64(j / float64(s.clock) * 1e6))
			}
			transit = tr
		}
		started = true
	}
}

// seqState is a received track's sequence-number accounting: gaps count
// in lost until a late packet fills them.
type seqState struct {
	last    uint16
	started bool
	// missing has a bit set for each sequence number of the last
	// recvWindow that was skipped (counted in lost) and has not arrived.
	missing [recvWindow / 64]uint64
}

func (q *seqState) set(seq uint16, on bool) {
	i, b := seq%recvWindow/64, uint64(1)<<(seq%64)
	if on {
		q.missing[i] |= b
	} else {
		q.missing[i] &^= b
	}
}

// add accounts for seq in s's counters and reports whether it is the
// newest so far (not a late packet).
func (q *seqState) add(s *RecvStats, seq uint16) bool {
	switch d := seq - q.last; {
	case !q.started:
	case int16(d) <= 0:
		s.late.Add(1)
		// A retransmission or a reordered packet fills its gap: it was
		// not lost after all (a duplicate was never missing).
		if q.last-seq < recvWindow-1 && q.missing[seq%recvWindow/64]&(1<<(seq%64)) != 0 {
			q.set(seq, false)
			s.lost.Add(^uint64(0))
			s.repair.Add(1)
		}
		return false
	case d < 1000:
		s.lost.Add(uint64(d - 1))
		for x := q.last + 1; x != seq; x++ {
			q.set(x, true)
		}
	default:
		// A jump (a new source, a restart): not loss.
		q.missing = [recvWindow / 64]uint64{}
	}
	q.set(seq, false)
	q.last, q.started = seq, true
	s.lastSeq.Store(uint32(seq))
	return true
}

// Packets, Bytes and Lost count what arrived and the sequence gaps.
func (s *RecvStats) Packets() uint64 { return s.packets.Load() }
func (s *RecvStats) Bytes() uint64   { return s.bytes.Load() }
func (s *RecvStats) Lost() uint64    { return s.lost.Load() }

// Late counts packets older than the newest already received
// (retransmissions and reordering); LastSeq is the newest sequence number.
func (s *RecvStats) Late() uint64    { return s.late.Load() }
func (s *RecvStats) LastSeq() uint16 { return uint16(s.lastSeq.Load()) }

// Repaired counts late packets that filled a gap (NACKed retransmissions,
// reordering): Lost no longer counts them.
func (s *RecvStats) Repaired() uint64 { return s.repair.Load() }

// Layer is the simulcast layer (0 low, 2 high) of the last video packet.
func (s *RecvStats) Layer() int { return int(s.layer.Load()) }

// Jitter is the interarrival jitter.
func (s *RecvStats) Jitter() time.Duration { return time.Duration(s.jitter.Load()) * time.Microsecond }
