package recovery

import (
	"encoding/binary"
	"errors"
	"math"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/config"
)

// ErrTooBig is returned for a message longer than a shard can carry.
var ErrTooBig = errors.New("recovery: message longer than relaywire.MaxShardLen-2")

// SenderConfig tunes a Sender. Zero values take the defaults.
type SenderConfig struct {
	// History is how many sent messages are kept for retransmission
	// (default 512: 100 ms of a 5,000 packet/s link; each slot holds
	// MaxShardLen bytes, so 512 slots cost 768 KB per link).
	History int
	// GroupSize is K, the data messages per full FEC group (default 16).
	// A larger K costs less overhead for the same protection but delays
	// repair by up to a group's duration (10 % loss, target 1 %: K=16
	// takes m=5, 31 %; K=10 m=4, 40 %).
	GroupSize int
	// GroupDelay closes a group with fewer than GroupSize messages once its
	// first message is this old (default 20 ms), bounding the wait for
	// repair on a quiet link: parity leaves at most GroupDelay plus one
	// Tick period after its group's first message. Such a short group
	// gets parity at the rate of a full one (groupParity), not the more a
	// group of its size would need for the same Target, unless the NACKs
	// have no time to repair what it leaves (MissTarget).
	GroupDelay time.Duration
	// Target is the fraction of data messages FEC may leave unrepaired
	// (Residual) on a full group (default 0.01); NACKs repair the rest
	// where the RTT allows. One NACK round at 10 % loss each way (the
	// NACK or the retransmission lost: 19 %) leaves 0.19 % of them.
	Target float64
	// Deadline is how late a message may arrive and still be played (a
	// jitter buffer's depth; default 200 ms). With the link's RTT it
	// gives the NACK rounds that repair in time (NackRounds).
	Deadline time.Duration
	// MissTarget is the fraction of messages that may still miss the
	// Deadline after FEC and the NACK rounds that fit (default 0.002, a
	// fifth of the 0.5 % issue 13 allows at 10 % loss). Every group gets
	// the parity that leaves at most MissTarget / q^rounds to the NACKs
	// (q = 1-(1-loss)^2, a round's NACK or retransmission lost): nothing
	// more on a link of a few milliseconds (5 rounds), a group of its own
	// size's protection where one round or none fits (a far link).
	MissTarget float64
	// MaxOverhead caps parity shards at this fraction of k (default 0.5).
	MaxOverhead float64
	// MaxRetransmits is how often one message is sent again for NACKs
	// (default 5, the receiver's MaxNacks): a peer NACKing the same
	// sequences over and over cannot make this node amplify its traffic.
	MaxRetransmits int
}

func (c *SenderConfig) defaults() {
	config.Default(&c.History, 512)
	if c.GroupSize > relaywire.MaxShards {
		c.GroupSize = 0
	}
	config.Default(&c.GroupSize, 16)
	config.Default(&c.GroupDelay, 20*time.Millisecond)
	config.Default(&c.Target, 0.01)
	config.Default(&c.Deadline, 200*time.Millisecond)
	config.Default(&c.MissTarget, 0.002)
	config.Default(&c.MaxOverhead, 0.5)
	config.Default(&c.MaxRetransmits, 5)
	if c.History < 2*relaywire.MaxShards {
		c.History = 2 * relaywire.MaxShards // a group's messages stay in the history until it closes
	}
}

type slot struct {
	seq   uint32
	ok    bool
	n     int
	tries int    // retransmissions (sender only)
	buf   []byte // MaxShardLen bytes: 2-byte length, then the message
	// data (sender only) is buf with slotRoom bytes before it: the data
	// body (the sequence, then the message) is built in place over the
	// room and the length, which closeGroup writes again before it
	// encodes parity.
	data []byte
}

// slotRoom is what a sender's history slot holds before its shard, so
// that sequence ‖ message is one slice (relaywire.DataSeqLen = slotRoom +
// the shard's 2-byte length).
const slotRoom = relaywire.DataSeqLen - 2

// Sender is the sending half of one link direction. It is not safe for
// concurrent use; the caller serialises.
type Sender struct {
	cfg  SenderConfig
	next uint32
	hist []slot
	m    int // parity per full group at the current loss
	// need[k] is the least parity a group of k gets: what leaves at most
	// MissTarget after the NACK rounds that fit (SetLink)
	need [relaywire.MaxShards + 1]uint8
	// credit is the parity owed but not yet sent (under 1 shard): short
	// groups get parity at the full groups' rate, m/GroupSize per data
	// message, carried from group to group.
	credit  float64
	base    uint32
	count   int
	opened  time.Time
	shards  [][]byte
	scratch [][]byte
	par     relaywire.Parity

	DataSent, ParitySent, ParityBytes, DataBytes, Retransmits uint64
	// Refused counts NACKed sequences not sent again: no longer in the
	// history, or sent MaxRetransmits times already.
	Refused uint64
}

// NewSender returns a Sender; the first message gets sequence 1.
func NewSender(cfg SenderConfig) *Sender {
	cfg.defaults()
	s := &Sender{cfg: cfg, next: 1, base: 1, hist: make([]slot, cfg.History)}
	const stride = slotRoom + relaywire.MaxShardLen
	slab := make([]byte, cfg.History*stride)
	for i := range s.hist {
		s.hist[i].data = slab[i*stride : (i+1)*stride : (i+1)*stride]
		s.hist[i].buf = s.hist[i].data[slotRoom:]
	}
	s.scratch = make([][]byte, 2*relaywire.MaxShards)
	pslab := make([]byte, relaywire.MaxShards*relaywire.MaxShardLen)
	for i := 0; i < relaywire.MaxShards; i++ {
		s.scratch[relaywire.MaxShards+i] = pslab[i*relaywire.MaxShardLen : (i+1)*relaywire.MaxShardLen]
	}
	s.shards = make([][]byte, 0, 2*relaywire.MaxShards)
	return s
}

// SetLoss is SetLink with the RTT unknown (taken as short: NACKs repair
// in time).
func (s *Sender) SetLoss(loss float64) { s.SetLink(loss, 0) }

// SetLink sets the link's measured loss (0..1) and round-trip time (0
// unknown). Groups closed from now on carry parity at the rate of a full
// group's ParityFor(GroupSize, loss, Target), and each at least what
// leaves MissTarget after the NACK rounds that fit its Deadline.
func (s *Sender) SetLink(loss float64, rtt time.Duration) {
	loss = min(max(loss, 0), 1)
	q := 1 - (1-loss)*(1-loss)
	miss := s.cfg.MissTarget / math.Pow(q, float64(NackRounds(rtt, s.cfg.Deadline)))
	for k := 0; k <= s.cfg.GroupSize; k++ {
		s.need[k] = uint8(ParityFor(k, loss, miss, s.cfg.MaxOverhead))
	}
	k := s.cfg.GroupSize
	s.m = max(ParityFor(k, loss, s.cfg.Target, s.cfg.MaxOverhead), int(s.need[k]))
	if s.m == 0 {
		s.credit = 0
	}
}

// nackTick is the period the relay endpoint runs NackDue and Tick at.
const nackTick = 5 * time.Millisecond

// NackRounds is how many NACK rounds bring a message lost on a link of
// round-trip time rtt within deadline of its sending, with the
// Receiver's default timing: the gap is seen half an RTT after the
// message left, NACKed FECWait and a timer tick later, and the
// retransmission is there an RTT after that; each further round waits
// max(NackInterval, 1.5 RTT). At most MaxNacks; an unknown rtt (0) gets
// them all. At the 200 ms default deadline: RTT 1 ms 5 rounds, 40 ms 2,
// 70 ms 1, 130 ms none.
func NackRounds(rtt, deadline time.Duration) int {
	var rc ReceiverConfig
	rc.defaults()
	if rtt <= 0 {
		return rc.MaxNacks
	}
	at := rtt/2 + rc.FECWait + nackTick + rtt
	iv := max(rc.NackInterval, rtt+rtt/2)
	n := 0
	for n < rc.MaxNacks && at <= deadline {
		n++
		at += iv
	}
	return n
}

// Parity is the parity shards a full group carries now.
func (s *Sender) Parity() int { return s.m }

// Next numbers msg and keeps it for retransmission and FEC. It returns the
// sequence to send msg under; when msg fills a group, emit is called with
// each parity body (relaywire.AppendParity's encoding appended to buf) to
// send after it.
func (s *Sender) Next(msg []byte, now time.Time, buf []byte, emit func(body []byte)) (uint32, error) {
	sl, err := s.push(msg, nil, now, buf, emit)
	if err != nil {
		return 0, err
	}
	return sl.seq, nil
}

// NextData is Next for a message in two pieces, head then tail (a relay
// header re-encoded for one next hop, and the payload every next hop
// shares), that returns the data body to seal: the sequence, then the
// message (relaywire.AppendData's encoding). The message is copied once,
// into the history, and the body is that copy (with the sequence written
// before it), valid until the next call on s: a relay hop seals each next
// hop's frame straight from it.
func (s *Sender) NextData(head, tail []byte, now time.Time, buf []byte, emit func(body []byte)) ([]byte, error) {
	sl, err := s.push(head, tail, now, buf, emit)
	if err != nil {
		return nil, err
	}
	return s.dataBody(sl), nil
}

// push numbers head ‖ tail and keeps it in its history slot.
func (s *Sender) push(head, tail []byte, now time.Time, buf []byte, emit func(body []byte)) (*slot, error) {
	n := len(head) + len(tail)
	if n > relaywire.MaxShardLen-2 {
		return nil, ErrTooBig
	}
	seq := s.next
	s.next++
	sl := &s.hist[seq%uint32(len(s.hist))]
	sl.seq, sl.ok, sl.n, sl.tries = seq, true, 2+n, 0
	binary.BigEndian.PutUint16(sl.buf, uint16(n))
	copy(sl.buf[2+copy(sl.buf[2:], head):], tail)
	s.DataSent++
	s.DataBytes += uint64(n)
	if s.count == 0 {
		s.base, s.opened = seq, now
	}
	s.count++
	if s.count >= s.cfg.GroupSize {
		s.closeGroup(buf, emit)
	}
	return sl, nil
}

// dataBody writes sl's sequence over the room and the length before its
// message and returns sequence ‖ message. The length is written again
// when sl's group closes (closeGroup), the one reader of it.
func (s *Sender) dataBody(sl *slot) []byte {
	binary.BigEndian.PutUint32(sl.data, sl.seq)
	return sl.data[:relaywire.DataSeqLen+sl.n-2]
}

// Tick closes a group older than GroupDelay; call it every few
// milliseconds.
func (s *Sender) Tick(now time.Time, buf []byte, emit func(body []byte)) {
	if s.count > 0 && now.Sub(s.opened) >= s.cfg.GroupDelay {
		s.closeGroup(buf, emit)
	}
}

func (s *Sender) closeGroup(buf []byte, emit func(body []byte)) {
	k := s.count
	s.count = 0
	m := s.groupParity(k)
	if m == 0 {
		return
	}
	if len(s.hist) < k {
		return
	}
	shardLen := 0
	for i := 0; i < k; i++ {
		if n := s.hist[(s.base+uint32(i))%uint32(len(s.hist))].n; n > shardLen {
			shardLen = n
		}
	}
	enc, err := codec(k, m)
	if err != nil {
		return
	}
	s.shards = s.shards[:0]
	for i := 0; i < k; i++ {
		sl := &s.hist[(s.base+uint32(i))%uint32(len(s.hist))]
		binary.BigEndian.PutUint16(sl.buf, uint16(sl.n-2)) // a data body may have covered it
		clear(sl.buf[sl.n:shardLen])
		s.shards = append(s.shards, sl.buf[:shardLen])
	}
	for i := 0; i < m; i++ {
		s.shards = append(s.shards, s.scratch[relaywire.MaxShards+i][:shardLen])
	}
	if enc.Encode(s.shards) != nil {
		return
	}
	for i := 0; i < m; i++ {
		s.par = relaywire.Parity{Base: s.base, K: uint8(k), M: uint8(m), Index: uint8(i), Shard: s.shards[k+i]}
		body, err := relaywire.AppendParity(buf[:0], &s.par)
		if err != nil {
			return
		}
		s.ParitySent++
		s.ParityBytes += uint64(shardLen)
		emit(body)
	}
}

// groupParity is the parity shards for a group of k messages closing now:
// m*k/GroupSize with the fraction carried to the next group, so that
// parity is m/GroupSize of the data messages whatever the groups' sizes;
// and at least need[k], where the NACKs cannot repair in time what that
// would leave. A full group gets m (the credit carried is under one
// shard). A group of k < GroupSize closed by GroupDelay would need more
// than that for the Target (10 % loss, k=5: m=2, 40 %, where k=16 takes
// 31 %); a link of a few hundred messages a second closes most groups
// so, and giving each the protection of a full group cost it about 1.5
// times the parity of a busy link. Its larger Residual is left to the
// NACKs where they have the time: k=5 groups at 10 % loss alternate m=1
// (Residual 4.1 %) and m=2 (1.1 %), 2.6 % on average; one NACK round at
// 10 % loss each way leaves 0.5 %, two 0.09 %, five 0.0006 %.
func (s *Sender) groupParity(k int) int {
	if s.m == 0 || k <= 0 {
		return 0
	}
	s.credit += float64(s.m*k) / float64(s.cfg.GroupSize)
	m := min(int(s.credit), k, relaywire.MaxShards)
	s.credit = min(s.credit-float64(m), 1)
	return max(m, int(s.need[k]))
}

// Retransmit returns the message sent under seq while the history still
// holds it and it was sent again fewer than MaxRetransmits times.
func (s *Sender) Retransmit(seq uint32) ([]byte, bool) {
	sl := s.retransmit(seq)
	if sl == nil {
		return nil, false
	}
	return sl.buf[2:sl.n], true
}

// RetransmitData is Retransmit that returns the data body to seal (the
// sequence, then the message) from the history slot, as NextData does.
func (s *Sender) RetransmitData(seq uint32) ([]byte, bool) {
	sl := s.retransmit(seq)
	if sl == nil {
		return nil, false
	}
	return s.dataBody(sl), true
}

func (s *Sender) retransmit(seq uint32) *slot {
	sl := &s.hist[seq%uint32(len(s.hist))]
	if !sl.ok || sl.seq != seq || sl.tries >= s.cfg.MaxRetransmits {
		s.Refused++
		return nil
	}
	sl.tries++
	s.Retransmits++
	return sl
}
