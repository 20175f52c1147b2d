package recovery

import (
	"encoding/binary"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/config"
)

// ReceiverConfig tunes a Receiver. Zero values take the defaults.
type ReceiverConfig struct {
	// Window is how many recent messages are kept for FEC repair and
	// duplicate detection (default 512); a message older than the newest
	// by Window is dropped as late.
	Window int
	// NackDelay is how long a gap waits for FEC or reordering before its
	// first NACK (default 3 ms).
	NackDelay time.Duration
	// FECWait is how long a gap waits for its FEC group's parity before
	// its first NACK while parity arrives on the link (default 25 ms: the
	// Sender's default GroupDelay and one 5 ms tick of the relay's
	// timers, the latest a group's parity leaves). Parity of the gap's
	// group that does not rebuild it ends the wait (NACKed NackDelay
	// after the gap was seen). Without it a gap of a group that closes
	// by GroupDelay (a link of a few hundred messages a second) is
	// NACKed before its parity is sent, and repaired twice.
	FECWait time.Duration
	// NackInterval is the least time between NACKs of one sequence; the
	// link's RTT raises it (default 10 ms).
	NackInterval time.Duration
	// MaxNacks is how often one sequence is NACKed before it is given up
	// (default 5).
	MaxNacks int
	// MaxMissing bounds the gaps tracked at once (default 512); a jump
	// larger than that is counted lost without NACKs (a peer that skipped
	// ahead, or an attack on the receiver's memory).
	MaxMissing int
}

func (c *ReceiverConfig) defaults() {
	config.Default(&c.Window, 512)
	config.Default(&c.NackDelay, 3*time.Millisecond)
	config.Default(&c.FECWait, 25*time.Millisecond)
	config.Default(&c.NackInterval, 10*time.Millisecond)
	config.Default(&c.MaxNacks, 5)
	config.Default(&c.MaxMissing, 512)
}

type missing struct {
	seq   uint32
	seen  time.Time // when the gap was found
	next  time.Time
	tries int
}

type group struct {
	base     uint32
	k, m     int
	shardLen int
	have     [relaywire.MaxShards]bool
	par      [relaywire.MaxShards][]byte
	done     bool
	used     bool
}

const groups = 16

// fecIdle is how many data messages without parity end the FEC wait for
// gaps (ReceiverConfig.FECWait): the sender sends none at its measured
// loss.
const fecIdle = 4 * relaywire.MaxShards

// Receiver is the receiving half of one link direction. It is not safe for
// concurrent use.
type Receiver struct {
	cfg     ReceiverConfig
	highest uint32
	ring    []slot
	miss    []missing
	grp     [groups]group
	gnext   int
	shards  [][]byte
	rebuilt [][]byte

	expected, holes uint64 // since the last TakeLoss
	// sinceParity counts data messages since the last parity (up to
	// fecIdle): under fecIdle, new gaps wait FECWait for parity.
	sinceParity int

	// Counters, cumulative.
	Received, Duplicates, Late, Recovered, GivenUp, Jumps uint64
}

// NewReceiver returns a Receiver.
func NewReceiver(cfg ReceiverConfig) *Receiver {
	cfg.defaults()
	r := &Receiver{cfg: cfg, ring: make([]slot, cfg.Window), sinceParity: fecIdle}
	slab := make([]byte, cfg.Window*relaywire.MaxShardLen)
	for i := range r.ring {
		r.ring[i].buf = slab[i*relaywire.MaxShardLen : (i+1)*relaywire.MaxShardLen]
	}
	r.shards = make([][]byte, 0, 2*relaywire.MaxShards)
	r.rebuilt = make([][]byte, relaywire.MaxShards)
	rslab := make([]byte, relaywire.MaxShards*relaywire.MaxShardLen)
	for i := range r.rebuilt {
		r.rebuilt[i] = rslab[i*relaywire.MaxShardLen : (i+1)*relaywire.MaxShardLen]
	}
	return r
}

func (r *Receiver) slot(seq uint32) *slot { return &r.ring[seq%uint32(len(r.ring))] }

func (r *Receiver) has(seq uint32) bool {
	s := r.slot(seq)
	return s.ok && s.seq == seq
}

// OnData takes a data message received under seq; when it is new, it is
// kept and passed to deliver, with any message FEC rebuilds because of it.
// It reports whether msg was new.
func (r *Receiver) OnData(seq uint32, msg []byte, now time.Time, deliver func(seq uint32, msg []byte)) bool {
	if seq == 0 || len(msg) > relaywire.MaxShardLen-2 {
		return false
	}
	if r.highest != 0 && int32(seq-r.highest) <= -int32(len(r.ring)) {
		r.Late++
		return false
	}
	if r.has(seq) {
		r.Duplicates++
		return false
	}
	r.store(seq, msg)
	r.Received++
	if r.sinceParity < fecIdle {
		r.sinceParity++
	}
	switch {
	case r.highest == 0:
		r.highest = seq
		r.expected++
	case int32(seq-r.highest) > 0:
		gap := seq - r.highest - 1
		r.expected += uint64(gap) + 1
		r.holes += uint64(gap)
		if int(gap) > r.cfg.MaxMissing {
			r.Jumps++
			r.GivenUp += uint64(gap)
		} else {
			for s := r.highest + 1; s != seq; s++ {
				r.addMissing(s, now)
			}
		}
		r.highest = seq
	default:
		r.removeMissing(seq)
	}
	deliver(seq, msg)
	for i := range r.grp {
		g := &r.grp[i]
		if g.used && !g.done && int32(seq-g.base) >= 0 && int(seq-g.base) < g.k {
			r.repair(g, deliver)
		}
	}
	return true
}

func (r *Receiver) store(seq uint32, msg []byte) {
	s := r.slot(seq)
	s.seq, s.ok, s.n = seq, true, 2+len(msg)
	binary.BigEndian.PutUint16(s.buf, uint16(len(msg)))
	copy(s.buf[2:], msg)
}

func (r *Receiver) addMissing(seq uint32, now time.Time) {
	if len(r.miss) >= r.cfg.MaxMissing {
		r.GivenUp++
		return
	}
	wait := r.cfg.NackDelay
	if r.sinceParity < fecIdle && !r.covered(seq) {
		wait = max(wait, r.cfg.FECWait)
	}
	r.miss = append(r.miss, missing{seq: seq, seen: now, next: now.Add(wait)})
}

// covered reports whether parity of seq's group arrived already.
func (r *Receiver) covered(seq uint32) bool {
	for i := range r.grp {
		g := &r.grp[i]
		if g.used && int32(seq-g.base) >= 0 && int(seq-g.base) < g.k {
			return true
		}
	}
	return false
}

func (r *Receiver) removeMissing(seq uint32) {
	for i := range r.miss {
		if r.miss[i].seq == seq {
			r.miss = append(r.miss[:i], r.miss[i+1:]...)
			return
		}
	}
}

// OnParity takes a parity shard; messages it rebuilds go to deliver.
func (r *Receiver) OnParity(p *relaywire.Parity, deliver func(seq uint32, msg []byte)) {
	if len(p.Shard) < 2 || len(p.Shard) > relaywire.MaxShardLen || p.K == 0 || p.M == 0 ||
		int(p.K) > relaywire.MaxShards || int(p.M) > relaywire.MaxShards || p.Index >= p.M {
		return // not a shard relaywire.ParseParity passes
	}
	if r.highest != 0 && int32(p.Base-r.highest) <= -int32(len(r.ring)) {
		r.Late++
		return
	}
	var g *group
	for i := range r.grp {
		if r.grp[i].used && r.grp[i].base == p.Base {
			g = &r.grp[i]
			break
		}
	}
	if g == nil {
		g = &r.grp[r.gnext]
		r.gnext = (r.gnext + 1) % groups
		g.used, g.done, g.base, g.k, g.m, g.shardLen = true, false, p.Base, int(p.K), int(p.M), len(p.Shard)
		g.have = [relaywire.MaxShards]bool{}
	}
	if g.done || int(p.K) != g.k || int(p.M) != g.m || len(p.Shard) != g.shardLen || g.have[p.Index] {
		return
	}
	if g.par[p.Index] == nil {
		g.par[p.Index] = make([]byte, relaywire.MaxShardLen)
	}
	copy(g.par[p.Index], p.Shard)
	g.have[p.Index] = true
	r.sinceParity = 0
	r.repair(g, deliver)
	if !g.done {
		// short of shards for now: its gaps wait no longer for FEC than
		// for reordering (NackDelay)
		for i := range r.miss {
			if m := &r.miss[i]; m.tries == 0 && int32(m.seq-g.base) >= 0 && int(m.seq-g.base) < g.k {
				m.next = m.seen.Add(r.cfg.NackDelay)
			}
		}
	}
}

// repair rebuilds the group's missing data messages once k of its shards
// are here.
func (r *Receiver) repair(g *group, deliver func(seq uint32, msg []byte)) {
	if int32(r.highest-g.base) >= int32(len(r.ring)-relaywire.MaxShards) {
		g.done = true // its slots may hold newer messages now
		return
	}
	present, lost := 0, 0
	for i := 0; i < g.k; i++ {
		if r.has(g.base + uint32(i)) {
			present++
		} else {
			lost++
		}
	}
	if lost == 0 {
		g.done = true
		return
	}
	for i := 0; i < g.m; i++ {
		if g.have[i] {
			present++
		}
	}
	if present < g.k {
		return
	}
	enc, err := codec(g.k, g.m)
	if err != nil {
		g.done = true
		return
	}
	r.shards = r.shards[:0]
	j := 0
	for i := 0; i < g.k; i++ {
		seq := g.base + uint32(i)
		if r.has(seq) {
			s := r.slot(seq)
			if s.n > g.shardLen {
				g.done = true // the sender's shards were shorter: not this group
				return
			}
			clear(s.buf[s.n:g.shardLen])
			r.shards = append(r.shards, s.buf[:g.shardLen])
		} else {
			r.shards = append(r.shards, r.rebuilt[j][:0])
			j++
		}
	}
	for i := 0; i < g.m; i++ {
		if g.have[i] {
			r.shards = append(r.shards, g.par[i][:g.shardLen])
		} else {
			r.shards = append(r.shards, nil)
		}
	}
	g.done = true
	if enc.ReconstructData(r.shards) != nil {
		return
	}
	for i := 0; i < g.k; i++ {
		seq := g.base + uint32(i)
		if r.has(seq) {
			continue
		}
		sh := r.shards[i]
		n := int(binary.BigEndian.Uint16(sh))
		if n > g.shardLen-2 {
			continue
		}
		msg := sh[2 : 2+n]
		r.store(seq, msg)
		r.removeMissing(seq)
		r.Recovered++
		deliver(seq, r.slot(seq).buf[2:2+n])
	}
}

// NackDue appends to out the sequences to NACK now, and gives up those
// NACKed MaxNacks times. rtt is the link's round-trip time (0 unknown).
func (r *Receiver) NackDue(now time.Time, rtt time.Duration, out []uint32) []uint32 {
	iv := r.cfg.NackInterval
	if rtt+rtt/2 > iv {
		iv = rtt + rtt/2
	}
	kept := r.miss[:0]
	for _, m := range r.miss {
		if r.has(m.seq) {
			continue
		}
		if now.Before(m.next) {
			kept = append(kept, m)
			continue
		}
		if m.tries >= r.cfg.MaxNacks {
			r.GivenUp++
			continue
		}
		if len(out) < relaywire.MaxNack {
			out = append(out, m.seq)
			m.tries++
			m.next = now.Add(iv)
		}
		kept = append(kept, m)
	}
	r.miss = kept
	return out
}

// TakeLoss returns the fraction of messages that did not arrive first
// time (before NACK or FEC repair) since the last call, and starts a new
// interval. It is -1 when nothing was expected.
func (r *Receiver) TakeLoss() float64 {
	if r.expected == 0 {
		return -1
	}
	l := float64(r.holes) / float64(r.expected)
	r.expected, r.holes = 0, 0
	return l
}
