package rtpfeedback

import (
	"time"

	"github.com/pion/rtcp"
)

// logSize is how many sequence numbers the NACK receive log remembers:
// pion's generator's default (nack.GeneratorSize).
const logSize = 512

// receiveLog is a bitmap of the last logSize sequence numbers of one
// stream, as pion's nack receiveLog keeps it: end is the newest sequence
// number seen, lastConsecutive the newest one before which nothing is
// missing. counts holds how often each missing slot has been NACKed.
type receiveLog struct {
	bits            [logSize / 64]uint64
	counts          [logSize]uint8
	end             uint16
	lastConsecutive uint16
	started         bool
}

// add records seq and reports whether it was already recorded (a
// duplicate within the log's window).
func (l *receiveLog) add(seq uint16) (dup bool) {
	if !l.started {
		l.set(seq)
		l.end, l.lastConsecutive, l.started = seq, seq, true
		return false
	}
	if back := l.end - seq; back < logSize && l.has(seq) {
		return true
	}
	diff := seq - l.end
	switch {
	case diff < 1<<15:
		// Newer than end (counting wraps): the slots in between are
		// missing (they may hold packets of a window ago).
		for i := l.end + 1; i != seq; i++ {
			l.del(i)
		}
		l.end = seq
		if l.lastConsecutive+1 == seq {
			l.lastConsecutive = seq
		} else if seq-l.lastConsecutive > logSize {
			l.lastConsecutive = seq - logSize
			l.fixLastConsecutive()
		}
	case l.lastConsecutive+1 == seq:
		// Older than end, and it fills the first gap.
		l.lastConsecutive = seq
		l.fixLastConsecutive()
	}
	l.set(seq)
	return false
}

// missing appends to out (reused, no allocation when it has room) every
// sequence number after lastConsecutive up to end-skip that is not
// recorded, as pion's receiveLog.missingSeqNumbers.
func (l *receiveLog) missing(skip uint16, out []uint16) []uint16 {
	out = out[:0]
	if !l.started {
		return out
	}
	until := l.end - skip
	if until-l.lastConsecutive >= 1<<15 {
		return out // until is before lastConsecutive
	}
	for i := l.lastConsecutive + 1; i != until+1; i++ {
		if !l.has(i) {
			out = append(out, i)
		}
	}
	return out
}

func (l *receiveLog) set(seq uint16) {
	p := seq % logSize
	l.bits[p/64] |= 1 << (p % 64)
	l.counts[p] = 0
}

func (l *receiveLog) del(seq uint16) {
	p := seq % logSize
	l.bits[p/64] &^= 1 << (p % 64)
	l.counts[p] = 0
}

func (l *receiveLog) has(seq uint16) bool {
	p := seq % logSize
	return l.bits[p/64]&(1<<(p%64)) != 0
}

func (l *receiveLog) fixLastConsecutive() {
	i := l.lastConsecutive + 1
	for i != l.end+1 && l.has(i) {
		i++
	}
	l.lastConsecutive = i - 1
}

// RFC 3550 appendix A.1 constants.
const (
	maxDropout  = 3000
	maxMisorder = 100
	seqMod      = 1 << 16
)

// activeFor is how long after its last packet a stream is still reported
// on: libwebrtc's receive statistics timeout (RFC 3550 section 6.4 reports
// only on sources heard from).
const activeFor = 8 * time.Second

// stream is the receive state of one SSRC. The Interceptor's mutex
// guards it.
type stream struct {
	ssrc   uint32
	clock  uint32 // RTP clock rate in Hz; 0: no jitter
	nack   bool   // nack feedback negotiated (RFC 4585)
	twccID uint8  // transport-cc header extension id, 0 none

	// RFC 3550 A.1 and A.3.
	started       bool
	maxSeq        uint16
	cycles        uint32 // sequence number wraps, shifted by 16
	baseSeq       uint32
	badSeq        uint32
	received      uint32
	expectedPrior uint32
	receivedPrior uint32
	lastArrival   int64 // unix ns of the last packet counted

	// RFC 3550 A.8.
	arrivalBase int64  // unix ns that arrival units count from
	transit     uint32 // relative transit time of the last in-order packet
	lastTS      uint32
	jitter      uint32 // interarrival jitter in clock units, times 16
	haveTransit bool

	// The last sender report (RFC 3550 section 6.4.1): the middle 32 bits
	// of its NTP time and when it arrived (unix ns).
	lsr   uint32
	lsrAt int64

	log receiveLog // duplicates for every stream; NACKs when nack
}

// initSeq starts the sequence state over at seq (RFC 3550 A.1 init_seq).
func (s *stream) initSeq(seq uint16) {
	s.baseSeq = uint32(seq)
	s.maxSeq = seq
	s.badSeq = seqMod + 1
	s.cycles = 0
	s.received = 0
	s.receivedPrior = 0
	s.expectedPrior = 0
	s.haveTransit = false
}

// update counts one packet (RFC 3550 A.1 update_seq, without probation:
// the SSRC is known from signaling) and updates the jitter (A.8).
// Duplicates within the NACK log's window are not counted, so a
// retransmission of a packet that had arrived does not make loss
// negative.
func (s *stream) update(seq uint16, ts uint32, arrival int64) {
	if !s.started {
		s.started = true
		s.initSeq(seq)
		s.arrivalBase = arrival
		s.log.add(seq)
		s.received = 1
		s.lastArrival = arrival
		s.updateJitter(ts, arrival)
		return
	}
	inOrder := false
	udelta := seq - s.maxSeq
	switch {
	case udelta < maxDropout:
		if udelta != 0 {
			if seq < s.maxSeq {
				s.cycles += seqMod
			}
			s.maxSeq = seq
			inOrder = true
		}
	case uint32(udelta) <= seqMod-maxMisorder:
		// A very large jump: a restart of the sender's sequence if the
		// next packet follows this one, else ignored.
		if uint32(seq) != s.badSeq {
			s.badSeq = uint32(seq+1) & (seqMod - 1)
			return
		}
		s.initSeq(seq)
		s.log = receiveLog{}
		inOrder = true
	}
	if s.log.add(seq) {
		return // a duplicate
	}
	s.received++
	s.lastArrival = arrival
	// Jitter over in-order packets that start a new timestamp, as
	// libwebrtc computes it: packets of one frame leave together but are
	// paced, and a retransmission's timestamp is old, so neither says
	// anything about the path's jitter.
	if inOrder && ts != s.lastTS {
		s.updateJitter(ts, arrival)
	}
}

// updateJitter is RFC 3550 A.8 in integer arithmetic: the jitter is kept
// times 16.
func (s *stream) updateJitter(ts uint32, arrival int64) {
	s.lastTS = ts
	if s.clock == 0 {
		return
	}
	d := arrival - s.arrivalBase
	units := (d/int64(time.Second))*int64(s.clock) + (d%int64(time.Second))*int64(s.clock)/int64(time.Second)
	transit := uint32(units) - ts
	if s.haveTransit {
		delta := int64(int32(transit - s.transit))
		if delta < 0 {
			delta = -delta
		}
		j := int64(s.jitter) + delta - int64((s.jitter+8)>>4)
		s.jitter = uint32(min(j, 1<<31))
	}
	s.transit, s.haveTransit = transit, true
}

// report returns the stream's reception report block at now (unix ns):
// RFC 3550 A.3 for the loss fields, A.8 for the jitter, section 6.4.1 for
// LSR and DLSR. It starts a new reporting interval.
func (s *stream) report(now int64) rtcp.ReceptionReport {
	extMax := s.cycles + uint32(s.maxSeq)
	expected := extMax - s.baseSeq + 1
	lost := int64(expected) - int64(s.received)
	lost = max(min(lost, 0x7fffff), -0x800000)
	expInterval := expected - s.expectedPrior
	s.expectedPrior = expected
	recInterval := s.received - s.receivedPrior
	s.receivedPrior = s.received
	lostInterval := int64(expInterval) - int64(recInterval)
	var fraction uint8
	if expInterval != 0 && lostInterval > 0 {
		fraction = uint8((lostInterval << 8) / int64(expInterval))
	}
	var dlsr uint32
	if s.lsrAt != 0 && now > s.lsrAt {
		// Units of 1/65536 s.
		dlsr = uint32((now - s.lsrAt) * 65536 / int64(time.Second))
	}
	return rtcp.ReceptionReport{
		SSRC:               s.ssrc,
		FractionLost:       fraction,
		TotalLost:          uint32(lost) & 0xffffff, // 24-bit two's complement
		LastSequenceNumber: extMax,
		Jitter:             s.jitter >> 4,
		LastSenderReport:   s.lsr,
		Delay:              dlsr,
	}
}
