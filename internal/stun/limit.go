package stun

import (
	"hash/maphash"
	"net/netip"
	"sync/atomic"
	"time"
)

// rateSlots is the size of the answer rate limiter's table: 512 KiB of
// buckets. Sources share a bucket only when their keys collide; with
// 10,000 active sources a given source shares with another one about
// 15 % of the time, which costs it nothing unless that other one floods.
const rateSlots = 1 << 16

// rateLimiter limits the answers to each source address: a token bucket of
// rate tokens per second and burst tokens, as GCRA (one theoretical arrival
// time per bucket, updated with one compare-and-swap), so the readers of
// all sockets share it without a lock and it never allocates. Buckets live
// in a fixed table indexed by a keyed hash of the source (IPv4 address,
// IPv6 /64), so spoofed sources cannot grow it; what a spoofed flood can do
// is spend the buckets of the addresses it spoofs, which is the point.
type rateLimiter struct {
	seed      maphash.Seed
	period    int64 // nanoseconds per token
	tolerance int64 // (burst-1) periods
	start     time.Time
	slots     []atomic.Int64 // theoretical arrival time, ns since start
}

func newRateLimiter(rate, burst int) *rateLimiter {
	period := int64(time.Second) / int64(rate)
	return &rateLimiter{seed: maphash.MakeSeed(), period: period, tolerance: int64(burst-1) * period,
		start: time.Now(), slots: make([]atomic.Int64, rateSlots)}
}

// now is the clock of allow, read once per batch.
func (l *rateLimiter) now() int64 { return int64(time.Since(l.start)) }

// allow takes a token from a's bucket at time now (from l.now).
func (l *rateLimiter) allow(a netip.Addr, now int64) bool {
	k := addrKey(a).As16()
	s := &l.slots[maphash.Bytes(l.seed, k[:])%rateSlots]
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

// addrKey is what one source is: an IPv4 address, or an IPv6 /64 (one
// host usually holds a whole /64, so its addresses are one source).
func addrKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}
