package persource

import (
	"hash/maphash"
	"net/netip"
	"sync/atomic"
	"time"
)

// Slots is the size of a Rate's table: 512 KiB of buckets. Sources share a
// bucket only when their keys collide; with 10,000 active sources a given
// source shares with another one about 15 % of the time, which costs it
// nothing unless that other one floods.
const Slots = 1 << 16

// Rate limits events per source (Key): a token bucket of rate tokens per
// second and burst tokens, as GCRA (one theoretical arrival time per
// bucket, updated with one compare-and-swap), so the readers of all sockets
// share it without a lock and it never allocates. Buckets live in a fixed
// table indexed by a keyed hash of the source, so spoofed sources cannot
// grow it; what a spoofed flood can do is spend the buckets of the
// addresses it spoofs (and of those that collide with them), which is the
// point.
//
// A nil *Rate allows everything.
type Rate struct {
	seed      maphash.Seed
	period    int64 // nanoseconds per token
	tolerance int64 // (burst-1) periods
	start     time.Time
	slots     []atomic.Int64 // theoretical arrival time, ns on the clock of Now
}

// NewRate returns a limit of rate events per second per source, burst at
// once; nil (no limit) when rate <= 0. A burst below 1 is 1.
func NewRate(rate float64, burst int) *Rate {
	if rate <= 0 {
		return nil
	}
	period := max(int64(float64(time.Second)/rate), 1)
	return &Rate{seed: maphash.MakeSeed(), period: period, tolerance: int64(max(burst, 1)-1) * period,
		start: time.Now(), slots: make([]atomic.Int64, Slots)}
}

// Now is the clock of AllowAt, monotonic, in nanoseconds: read it once per
// batch of events.
func (l *Rate) Now() int64 { return int64(time.Since(l.start)) }

// Allow takes a token from a's bucket now.
func (l *Rate) Allow(a netip.Addr) bool {
	if l == nil {
		return true
	}
	return l.AllowAt(a, l.Now())
}

// AllowAt takes a token from a's bucket at time now (from Now).
func (l *Rate) AllowAt(a netip.Addr, now int64) bool {
	if l == nil {
		return true
	}
	k := Key(a).Addr().As16()
	s := &l.slots[maphash.Bytes(l.seed, k[:])%Slots]
	for {
		tat := s.Load()
		t := max(tat, now)
		if t-now > l.tolerance {
			return false
		}
		if s.CompareAndSwap(tat, t+l.period) {
			return true
		}
	}
}
