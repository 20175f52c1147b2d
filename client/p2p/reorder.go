package p2p

import "time"

// reorderBuf puts the peer's data back in sequence order. A datagram ahead
// of the next expected one waits until the gap fills or the gap's hold
// expires (then the gap counts as lost); one behind is late and dropped
// (the reader has moved on). It holds at most maxReorder datagrams.
const maxReorder = 256

type reorderBuf struct {
	next      uint64 // next sequence number to deliver
	started   bool
	held      map[uint64][]byte
	gapSince  time.Time // when the oldest held datagram arrived
	lost      uint64
	late      uint64
	reordered uint64
}

func (r *reorderBuf) init() { r.held = map[uint64][]byte{} }

// push takes datagram seq and returns what is now deliverable, in order.
func (r *reorderBuf) push(seq uint64, p []byte, now time.Time, hold time.Duration) [][]byte {
	if !r.started {
		// The first datagram seen starts the sequence: an earlier one
		// still in flight counts as late.
		r.started = true
		r.next = seq
	}
	if seq < r.next {
		r.late++
		return nil
	}
	if seq == r.next {
		out := [][]byte{append([]byte(nil), p...)}
		r.next++
		return r.drain(out, now)
	}
	if _, dup := r.held[seq]; dup {
		return nil
	}
	if len(r.held) == 0 {
		r.gapSince = now
	}
	r.held[seq] = append([]byte(nil), p...)
	r.reordered++
	if len(r.held) >= maxReorder {
		return r.skip(now)
	}
	return r.expire(now, hold)
}

// drain appends the held datagrams that follow in sequence.
func (r *reorderBuf) drain(out [][]byte, now time.Time) [][]byte {
	for {
		p, ok := r.held[r.next]
		if !ok {
			break
		}
		delete(r.held, r.next)
		out = append(out, p)
		r.next++
	}
	if len(r.held) > 0 {
		r.gapSince = now
	}
	return out
}

// skip gives up on the gap before the lowest held datagram.
func (r *reorderBuf) skip(now time.Time) [][]byte {
	low := ^uint64(0)
	for s := range r.held {
		low = min(low, s)
	}
	r.lost += low - r.next
	r.next = low
	return r.drain(nil, now)
}

// expire skips gaps held longer than hold.
func (r *reorderBuf) expire(now time.Time, hold time.Duration) [][]byte {
	var out [][]byte
	for len(r.held) > 0 && now.Sub(r.gapSince) >= hold {
		out = append(out, r.skip(now)...)
	}
	return out
}
