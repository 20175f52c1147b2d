package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// LeaseKey is the key of the leadership lease in bus.BucketLeader.
const LeaseKey = "controller"

// DefaultLeaseTTL is how long a lease lasts unrenewed. The holder renews
// every third of it; a contender takes it once it has seen no renewal for
// a whole TTL, so a dead leader is replaced within TTL plus one poll
// (about 2.7 s with 2 s).
const DefaultLeaseTTL = 2 * time.Second

// Lease is one controller's handle on the leadership lease: a key written
// with compare-and-set on its revision. No clock is compared across
// machines: a contender times the lease on its own clock from when it
// last saw the revision change, and the holder stops acting when its own
// renewals have failed for a TTL (Held), before any contender can take
// over (contenders wait a whole TTL from a renewal they saw, which is no
// earlier than the holder's).
type Lease struct {
	s   *Store
	id  string
	ttl time.Duration
	now func() time.Time

	// held is the lease's revision while held (0: not), renewed when the
	// last renewal succeeded.
	held    uint64
	renewed time.Time
	// seenRev and seenAt are the other holder's revision as last read and
	// when it was first seen (on this clock).
	seenRev uint64
	seenAt  time.Time
}

// NewLease returns id's lease handle (not safe for concurrent use: one
// controller loop owns it). ttl 0 is DefaultLeaseTTL; now nil is time.Now.
func (s *Store) NewLease(id string, ttl time.Duration, now func() time.Time) (*Lease, error) {
	if !bus.ValidName(id) {
		return nil, fmt.Errorf("cluster: controller id %q: %w", id, bus.ErrBadSubjectToken)
	}
	if ttl == 0 {
		ttl = DefaultLeaseTTL
	}
	if ttl < minLeaseTTL || ttl > maxLeaseTTL {
		return nil, fmt.Errorf("cluster: lease ttl %v outside %v-%v", ttl, minLeaseTTL, maxLeaseTTL)
	}
	if now == nil {
		now = time.Now
	}
	return &Lease{s: s, id: id, ttl: ttl, now: now}, nil
}

// TTL returns the lease time.
func (l *Lease) TTL() time.Duration { return l.ttl }

// Held returns the lease's revision if this controller holds it and its
// last renewal is younger than the TTL, else 0. A leader acts only while
// Held is not 0.
func (l *Lease) Held() uint64 {
	if l.held == 0 || l.now().Sub(l.renewed) >= l.ttl {
		return 0
	}
	return l.held
}

func (l *Lease) record() *LeaseRecord {
	return &LeaseRecord{Holder: l.id, TTLMillis: l.ttl.Milliseconds(), Renewed: l.now().UTC()}
}

// Step is one turn of the lease loop, run every TTL/3: the holder
// renews; a contender takes a lease that is absent, its own, or unrenewed
// for a TTL. It returns the revision held after it (0: not leader). A
// holder whose renewal is refused (another took the lease) gets
// ErrLeaseLost and holds nothing from then on.
func (l *Lease) Step(ctx context.Context) (uint64, error) {
	if l.held != 0 {
		return l.renew(ctx)
	}
	return l.acquire(ctx)
}

func (l *Lease) renew(ctx context.Context) (uint64, error) {
	start := l.now()
	rev, err := put(ctx, l.s, bus.BucketLeader, LeaseKey, l.record(), l.held)
	switch {
	case errors.Is(err, ErrConflict):
		l.held = 0
		return 0, fmt.Errorf("%w: renewal of revision refused", ErrLeaseLost)
	case err != nil:
		return l.Held(), err
	}
	// The renewal counts from when it was sent: the contenders' clocks
	// start no earlier than its arrival.
	l.held, l.renewed = rev, start
	return rev, nil
}

func (l *Lease) acquire(ctx context.Context) (uint64, error) {
	start := l.now()
	e, err := get[LeaseRecord](ctx, l.s, bus.BucketLeader, LeaseKey)
	var base uint64
	switch {
	case errors.Is(err, ErrNotFound):
		base = 0
	case errors.Is(err, ErrBadRecord):
		// A forged or broken lease is taken over like a dead one.
		base = e.Revision
		if !l.expired(base, start) {
			return 0, nil
		}
	case err != nil:
		return 0, err
	case e.Value.Holder == l.id:
		base = e.Revision // ours from before a restart
	default:
		base = e.Revision
		if !l.expired(base, start) {
			return 0, nil
		}
	}
	rev, err := put(ctx, l.s, bus.BucketLeader, LeaseKey, l.record(), base)
	if errors.Is(err, ErrConflict) {
		return 0, nil // another contender was quicker
	}
	if err != nil {
		return 0, err
	}
	l.held, l.renewed, l.seenRev = rev, start, 0
	return rev, nil
}

// expired tracks the other holder's revision and reports whether it has
// stayed the same for a TTL of this clock.
func (l *Lease) expired(rev uint64, now time.Time) bool {
	if rev != l.seenRev {
		l.seenRev, l.seenAt = rev, now
		return false
	}
	return now.Sub(l.seenAt) >= l.ttl
}

// Release gives the lease up (deleting it if still ours), so that another
// controller takes over at its next step instead of after a TTL.
func (l *Lease) Release(ctx context.Context) error {
	if l.held == 0 {
		return nil
	}
	rev := l.held
	l.held = 0
	err := del(ctx, l.s, bus.BucketLeader, LeaseKey, rev)
	if errors.Is(err, ErrConflict) {
		return nil
	}
	return err
}
