// Package gcc is a send-side bandwidth estimate of a subscriber's downlink
// from its transport-wide congestion control feedback
// (draft-holmer-rmcat-transport-wide-cc-extensions-01), with a simplified
// Google congestion control (draft-ietf-rmcat-gcc-02):
//
//   - Every RTP packet the SFU's own data path sends to a subscriber that
//     negotiated the transport-cc header extension carries a transport-wide sequence
//     number, one counter per peer connection (atomic: a subscriber's
//     downTracks are written from the publishers' read loops), and its send
//     time and size go into a ring of twccRing slots: one atomic store, no
//     lock, no allocation.
//   - The subscriber's feedback (rtcp.TransportLayerCC) says which of them
//     arrived and when. Packets are grouped by send time (5 ms bursts,
//     section 5.2); the difference of the arrival and send spacing of
//     consecutive groups is the delay gradient; a trendline of its
//     accumulation (libwebrtc's TrendlineEstimator, which replaced the
//     draft's Kalman filter) against an adaptive threshold (section 5.4)
//     says overuse, normal or underuse.
//   - The delay-based rate (section 5.5): overuse cuts it to 0.85 of the
//     acknowledged bitrate (what the subscriber received, measured from
//     the feedback), underuse holds it, normal lets it grow: by 25 % a
//     second far from the rate of the last overuse, additively near it.
//     It may not exceed twice the acknowledged bitrate plus 250 kbit/s:
//     without probing (the node sends no padding) the estimate grows only
//     as the layers it allows are taken up, one step at a time. After an
//     overuse it stays at most at the rate then acknowledged for a hold
//     of 3 s, doubling up to 16 s while overuses repeat: the node probes
//     a path only by choosing a larger layer, and a layer too large is a
//     visible glitch, so it does not try again every second.
//   - The loss-based rate (section 6) from the same feedback, over 300 ms
//     windows: more than 10 % lost cuts it by half the loss, less than 2 %
//     lets it grow 5 % and to at least 1.05 times the acknowledged rate.
//   - The estimate is the lower of the two; 0 (unknown) until the first
//     acknowledged bitrate is measured (both rates start at 1.5 times it),
//     and again when no feedback came for bweStale.
//
// pion's interceptor/pkg/gcc (v0.1.49) implements the same parts but only
// behind its pacer and its own RTP writer chain, with goroutines and
// per-packet allocation: the own data path writes RTP itself, so the parts are
// re-done here over the ring.
package gcc

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
)

// SendSide is one subscriber's send-side estimator: the ring of sent
// packets and the estimator state. Next and Record are called for every
// packet sent (from any goroutine), Feedback for every transport-cc
// feedback, Estimate when a layer is chosen.
type SendSide struct {
	seq  atomic.Uint32 // the next transport-wide sequence number (low 16 bits)
	base int64         // unix nanoseconds that send times count from
	ring [twccRing]atomic.Uint64

	mu sync.Mutex // guards the estimator state below
	// reported holds, per ring slot, the slot's value when a feedback
	// reported that packet: every packet counts once, however many
	// senders' RTCP readers see the feedback and whatever feedback repeats
	// it.
	reported [twccRing]uint64
	est      gccState
}

// twccRing is the number of packets whose send time is kept: about 0.7 s
// of 10 Mbit/s in 1200-byte packets; feedback comes every 50-100 ms.
const twccRing = 1024

// Packing of a ring slot: sequence number (16 bits), wire size (14 bits)
// and send time in microseconds since base (34 bits: wraps every 4.7 h;
// only differences between close packets are used).
const (
	slotSizeShift = 16
	slotTimeShift = 30
	slotTimeBits  = 34
	slotTimeMask  = 1<<slotTimeBits - 1
	slotSizeMask  = 1<<14 - 1
)

// Estimator constants (draft-ietf-rmcat-gcc-02 and libwebrtc's defaults).
const (
	bweMin             = 50_000      // bit/s: no estimate goes below
	bweMax             = 100_000_000 // bit/s: nor above
	bweStale           = 5 * time.Second
	bweBeta            = 0.85 // overuse: the rate becomes beta times the acknowledged bitrate
	bweGrowth          = 1.25 // multiplicative increase per second, far from the last overuse
	bweAdditive        = 60_000
	bweCapFactor       = 2.0
	bweCapExtra        = 250_000
	bweGroupUs         = 5_000 // burst grouping by send time, microseconds
	bweTrendWindow     = 20    // points of the trendline regression
	bweTrendSmoothing  = 0.9
	bweTrendGain       = 4.0
	bweThresholdInit   = 12.5 // ms
	bweKUp             = 0.0087
	bweKDown           = 0.039
	bweOveruseTimeMs   = 10.0
	bweLossHigh        = 0.10
	bweLossLow         = 0.02
	bweLossWindow      = 300 * time.Millisecond
	bweAckedWindowUs   = 250_000 // acknowledged bitrate measured over 250 ms of arrivals
	bweDecreaseBackoff = 200 * time.Millisecond
	bweHoldMin         = 3 * time.Second
	bweHoldMax         = 16 * time.Second
	bweHoldReset       = 30 * time.Second
)

// detector states (section 5.4).
const (
	usageNormal = iota
	usageOver
	usageUnder
)

// gccState is the estimator, guarded by SendSide.mu.
type gccState struct {
	started  bool  // a first packet group exists
	lastFb   int64 // unix nanoseconds of the last feedback with news
	lastRate int64 // unix nanoseconds of the last rate update
	// Arrival time unwrapping: the reference time is 24 bits of 64 ms.
	refBase int64 // microseconds added to the 24-bit reference
	lastRef int64 // the last unwrapped reference, microseconds
	haveRef bool

	// The current and previous packet groups: first send time, last send
	// and arrival times (microseconds).
	cur, prev        pktGroup
	havePrev         bool
	firstArrival     int64
	accDelay         float64 // ms
	smoothed         float64 // ms
	trendX, trendY   [bweTrendWindow]float64
	trendN, trendPos int
	numDeltas        int
	prevTrend        float64
	threshold        float64 // ms
	lastThreshUs     int64
	overuseMs        float64 // time in overuse, -1 when not overusing
	overuseCount     int
	usage            int
	sawOver          bool // an overuse was detected since the last rate update

	// Acknowledged bitrate.
	ackBytes  int64
	ackStart  int64 // arrival time (us) opening the window, -1 none
	ackLast   int64
	ackedRate float64 // bit/s, 0 unknown

	// Rates (bit/s).
	delayRate    float64
	lossRate     float64
	lastDecrease int64   // unix nanoseconds
	avgMax       float64 // acknowledged rate at the last overuse, 0 none
	// After an overuse the delay-based rate stays at most holdRate (the
	// acknowledged rate then) until holdUntil: without probing, the node
	// learns the path is wider only by choosing a larger layer, and a
	// layer that overflows it is a visible glitch. The hold doubles
	// (bweHoldMin to bweHoldMax) while overuses repeat within bweHoldReset.
	holdRate  float64
	holdUntil int64
	holdDur   time.Duration

	// Loss window.
	lossRecv, lossLost int
	lossStart          int64
	lastLoss           float64
}

type pktGroup struct {
	firstSend, lastSend, lastArrival int64
	size                             int
}

func New(now int64) *SendSide {
	s := &SendSide{base: now}
	s.est.threshold = bweThresholdInit
	s.est.overuseMs = -1
	s.est.ackStart = -1
	return s
}

// Next returns the transport-wide sequence number of the packet about to
// be sent.
func (s *SendSide) Next() uint16 { return uint16(s.seq.Add(1) - 1) }

// Record notes that packet seq of size bytes left at now (unix
// nanoseconds). It takes no lock and does not allocate.
func (s *SendSide) Record(seq uint16, size int, now int64) {
	us := uint64((now-s.base)/1000) & slotTimeMask
	s.ring[seq%twccRing].Store(uint64(seq) | uint64(size&slotSizeMask)<<slotSizeShift | us<<slotTimeShift)
}

// Recorded returns the wire size Record noted for packet seq, false when
// the ring no longer (or never) held it.
func (s *SendSide) Recorded(seq uint16) (size int, ok bool) {
	v := s.ring[seq%twccRing].Load()
	if v == 0 || uint16(v) != seq {
		return 0, false
	}
	return int(v >> slotSizeShift & slotSizeMask), true
}

// usDiff is a-b for two 34-bit send times.
func usDiff(a, b int64) int64 {
	d := (a - b) & slotTimeMask
	if d >= 1<<(slotTimeBits-1) {
		d -= 1 << slotTimeBits
	}
	return d
}

// Estimate returns the estimate in bit/s at now, 0 when unknown.
func (s *SendSide) Estimate(now int64) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := &s.est
	if e.ackedRate == 0 || now-e.lastFb > int64(bweStale) {
		return 0
	}
	return uint64(min(e.delayRate, e.lossRate))
}

// Feedback applies one transport-cc feedback received at now (unix
// nanoseconds). It reports whether the feedback was well formed and
// whether it told anything new (a feedback seen again through another
// sender's RTCP, or repeated, is not).
func (s *SendSide) Feedback(fb *rtcp.TransportLayerCC, now int64) (ok, news bool) {
	if fb == nil {
		return false, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e := &s.est
	ref := e.unwrapRef(fb.ReferenceTime)
	w := feedbackWalk{s: s, arrival: ref, deltas: fb.RecvDeltas, seq: fb.BaseSequenceNumber, remaining: int(fb.PacketStatusCount)}
	if !w.chunks(fb.PacketChunks) {
		return false, false
	}
	e.refBase = ref - int64(fb.ReferenceTime&0xffffff)*64_000
	e.lastRef, e.haveRef = ref, true
	if w.recv+w.lost == 0 {
		return true, false
	}
	e.lastFb = now
	e.lossRecv += w.recv
	e.lossLost += w.lost
	s.updateLocked(now)
	return true, true
}

// unwrapRef returns a feedback's arrival reference time (24 bits of 64 ms:
// 12.4 days) in microseconds, unwrapped next to the last one.
func (e *gccState) unwrapRef(referenceTime uint32) int64 {
	ref := int64(referenceTime&0xffffff) * 64_000
	if !e.haveRef {
		return ref
	}
	const span = 1 << 24 * 64_000
	r := ref + e.refBase
	for r-e.lastRef > span/2 {
		r -= span
	}
	for e.lastRef-r > span/2 {
		r += span
	}
	return r
}

// feedbackWalk is one feedback's walk through its packet status chunks,
// under SendSide.mu.
type feedbackWalk struct {
	s         *SendSide
	arrival   int64 // microseconds: the reference, then each delta added
	deltas    []*rtcp.RecvDelta
	seq       uint16 // the next packet's transport-wide sequence number
	remaining int    // packet statuses still to come
	recv      int    // packets of ours reported received, lost
	lost      int
	bad       bool // the feedback is malformed
}

// chunks walks the status chunks; false when the feedback is malformed.
func (w *feedbackWalk) chunks(chunks []rtcp.PacketStatusChunk) bool {
	for _, c := range chunks {
		if w.remaining <= 0 || w.bad {
			break
		}
		switch ch := c.(type) {
		case *rtcp.RunLengthChunk:
			if ch == nil {
				w.bad = true
				break
			}
			for n := min(int(ch.RunLength), w.remaining); n > 0 && !w.bad; n-- {
				w.status(ch.PacketStatusSymbol)
			}
		case *rtcp.StatusVectorChunk:
			if ch == nil {
				w.bad = true
				break
			}
			for _, sym := range ch.SymbolList {
				if w.remaining <= 0 || w.bad {
					break
				}
				if ch.SymbolSize == rtcp.TypeTCCSymbolSizeOneBit && sym > 1 {
					w.bad = true
					break
				}
				w.status(sym)
			}
		default:
			w.bad = true
		}
	}
	return !w.bad
}

// status takes one packet's status symbol: a packet of ours not counted
// before is counted received or lost, and a received one with its arrival
// time goes to the packet groups.
func (w *feedbackWalk) status(sym uint16) {
	if w.remaining <= 0 {
		return
	}
	w.remaining--
	q := w.seq
	w.seq++
	var at int64
	timed := false
	switch sym {
	case rtcp.TypeTCCPacketReceivedSmallDelta, rtcp.TypeTCCPacketReceivedLargeDelta:
		if len(w.deltas) == 0 || w.deltas[0] == nil {
			w.bad = true
			return
		}
		d := w.deltas[0].Delta
		w.deltas = w.deltas[1:]
		if d < -8_192_000 || d > 16_384_000 { // what 16 bits of 250 us hold
			w.bad = true
			return
		}
		w.arrival += d
		at, timed = w.arrival, true
	case rtcp.TypeTCCPacketReceivedWithoutDelta:
	case rtcp.TypeTCCPacketNotReceived:
	default:
		w.bad = true
		return
	}
	s := w.s
	slot := q % twccRing
	v := s.ring[slot].Load()
	if v == 0 || uint16(v) != q || s.reported[slot] == v {
		return // not ours (any more), or counted already
	}
	s.reported[slot] = v
	if sym == rtcp.TypeTCCPacketNotReceived {
		w.lost++
		return
	}
	w.recv++
	size := int(v >> slotSizeShift & slotSizeMask)
	sent := int64(v >> slotTimeShift)
	if timed {
		s.packetLocked(sent, at, size)
	}
}

// packetLocked takes one received packet (send time in 34-bit
// microseconds, arrival in microseconds) into the packet groups and the
// acknowledged bitrate.
func (s *SendSide) packetLocked(sent, at int64, size int) {
	e := &s.est
	// Acknowledged bitrate over windows of arrival time.
	if e.ackStart < 0 || at < e.ackStart {
		e.ackStart, e.ackLast, e.ackBytes = at, at, 0
	}
	e.ackBytes += int64(size)
	if at > e.ackLast {
		e.ackLast = at
	}
	if span := e.ackLast - e.ackStart; span >= bweAckedWindowUs {
		rate := float64(e.ackBytes*8) * 1e6 / float64(span)
		if e.ackedRate == 0 {
			// The first measure starts the estimate half above what got
			// through: a subscriber that receives its layers at their
			// full rate keeps them; one behind a narrower path soon
			// overuses it.
			e.ackedRate = rate
			e.delayRate, e.lossRate = max(1.5*rate, bweMin), max(1.5*rate, bweMin)
		} else {
			e.ackedRate = 0.25*e.ackedRate + 0.75*rate
		}
		e.ackStart, e.ackBytes = e.ackLast, 0
	}
	// Packet groups by send time (section 5.2).
	if !e.started {
		e.cur = pktGroup{firstSend: sent, lastSend: sent, lastArrival: at, size: size}
		e.started = true
		e.firstArrival = at
		return
	}
	if usDiff(sent, e.cur.firstSend) < 0 {
		return // reordered: older than the current group
	}
	if usDiff(sent, e.cur.firstSend) <= bweGroupUs {
		e.cur.lastSend = sent
		e.cur.lastArrival = max(e.cur.lastArrival, at)
		e.cur.size += size
		return
	}
	// A new group starts: the current one is complete.
	if e.havePrev {
		sendDelta := float64(usDiff(e.cur.lastSend, e.prev.lastSend)) / 1000
		arrDelta := float64(e.cur.lastArrival-e.prev.lastArrival) / 1000
		s.trendLocked(arrDelta, sendDelta, e.cur.lastArrival)
	}
	e.prev, e.havePrev = e.cur, true
	e.cur = pktGroup{firstSend: sent, lastSend: sent, lastArrival: at, size: size}
}

// trendLocked is libwebrtc's trendline filter and the overuse detector
// with its adaptive threshold (section 5.4), times in ms.
func (s *SendSide) trendLocked(arrDelta, sendDelta float64, arrivalUs int64) {
	e := &s.est
	if math.Abs(arrDelta) > 5000 || math.Abs(sendDelta) > 5000 {
		// A gap of seconds (no media, a stalled path): start over.
		e.trendN, e.trendPos, e.accDelay, e.smoothed, e.numDeltas = 0, 0, 0, 0, 0
		e.firstArrival = arrivalUs
		return
	}
	e.numDeltas = min(e.numDeltas+1, 1000)
	e.accDelay += arrDelta - sendDelta
	e.smoothed = bweTrendSmoothing*e.smoothed + (1-bweTrendSmoothing)*e.accDelay
	e.trendX[e.trendPos] = float64(arrivalUs-e.firstArrival) / 1000
	e.trendY[e.trendPos] = e.smoothed
	e.trendPos = (e.trendPos + 1) % bweTrendWindow
	if e.trendN < bweTrendWindow {
		e.trendN++
	}
	trend := e.prevTrend
	if e.trendN == bweTrendWindow {
		var sx, sy float64
		for i := range e.trendN {
			sx += e.trendX[i]
			sy += e.trendY[i]
		}
		mx, my := sx/float64(e.trendN), sy/float64(e.trendN)
		var num, den float64
		for i := range e.trendN {
			num += (e.trendX[i] - mx) * (e.trendY[i] - my)
			den += (e.trendX[i] - mx) * (e.trendX[i] - mx)
		}
		if den != 0 {
			trend = num / den
		}
	}
	modified := float64(min(e.numDeltas, 60)) * trend * bweTrendGain
	switch {
	case modified > e.threshold:
		if e.overuseMs < 0 {
			e.overuseMs = sendDelta / 2
		} else {
			e.overuseMs += sendDelta
		}
		e.overuseCount++
		if e.overuseMs > bweOveruseTimeMs && e.overuseCount > 1 && trend >= e.prevTrend {
			e.overuseMs, e.overuseCount = 0, 0
			e.usage, e.sawOver = usageOver, true
		}
	case modified < -e.threshold:
		e.overuseMs = -1
		e.usage = usageUnder
	default:
		e.overuseMs = -1
		e.usage = usageNormal
	}
	e.prevTrend = trend
	// The adaptive threshold (section 5.4), not moved by outliers.
	if abs := math.Abs(modified); abs <= e.threshold+15 {
		k := bweKUp
		if abs < e.threshold {
			k = bweKDown
		}
		dt := 100.0
		if e.lastThreshUs != 0 {
			dt = min(float64(arrivalUs-e.lastThreshUs)/1000, 100)
		}
		e.threshold = min(max(e.threshold+k*(abs-e.threshold)*dt, 6), 600)
	}
	e.lastThreshUs = arrivalUs
	if math.IsNaN(e.smoothed) || math.IsInf(e.smoothed, 0) || math.IsNaN(e.threshold) {
		e.accDelay, e.smoothed, e.threshold, e.trendN, e.trendPos = 0, 0, bweThresholdInit, 0, 0
	}
}

// updateLocked moves the delay-based and loss-based rates after a
// feedback at now (unix nanoseconds).
func (s *SendSide) updateLocked(now int64) {
	e := &s.est
	if e.ackedRate == 0 {
		e.lastRate = now
		return
	}
	dt := 0.0
	if e.lastRate != 0 {
		dt = min(max(float64(now-e.lastRate)/float64(time.Second), 0), 1)
	}
	e.lastRate = now
	switch {
	case e.sawOver:
		e.sawOver = false
		if now-e.lastDecrease >= int64(bweDecreaseBackoff) {
			e.delayRate = min(e.delayRate, bweBeta*e.ackedRate)
			e.avgMax = e.ackedRate
			switch {
			case e.lastDecrease == 0 || now-e.lastDecrease > int64(bweHoldReset):
				e.holdDur = bweHoldMin
			case now >= e.holdUntil:
				e.holdDur = min(2*e.holdDur, bweHoldMax)
			}
			e.holdRate, e.holdUntil = e.ackedRate, now+int64(e.holdDur)
			e.lastDecrease = now
		}
	case e.usage != usageNormal:
		// hold while the queue grows (not yet overuse) or drains (underuse)
	default:
		if e.avgMax > 0 && e.delayRate < 1.5*e.avgMax {
			e.delayRate += bweAdditive * dt
		} else {
			e.avgMax = 0
			e.delayRate *= math.Pow(bweGrowth, dt)
		}
		if now < e.holdUntil {
			e.delayRate = min(e.delayRate, max(e.holdRate, bweBeta*e.ackedRate))
		}
	}
	limit := bweCapFactor*e.ackedRate + bweCapExtra
	e.delayRate = min(max(e.delayRate, bweMin), limit, bweMax)

	// Loss-based (section 6), over windows of bweLossWindow.
	if e.lossStart == 0 {
		e.lossStart = now
	}
	if now-e.lossStart >= int64(bweLossWindow) && e.lossRecv+e.lossLost >= 10 {
		loss := float64(e.lossLost) / float64(e.lossRecv+e.lossLost)
		e.lastLoss = loss
		switch {
		case loss > bweLossHigh:
			e.lossRate *= 1 - 0.5*loss
		case loss < bweLossLow:
			// Clean delivery: the loss-based rate does not hold the
			// estimate below what gets through (it fell while the
			// sender had not yet adapted, and would take long to climb).
			e.lossRate = max(e.lossRate*1.05, e.ackedRate*1.05)
		}
		e.lossRecv, e.lossLost, e.lossStart = 0, 0, now
	}
	e.lossRate = min(max(e.lossRate, bweMin), limit, bweMax)
}
