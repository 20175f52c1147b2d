package cluster_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cluster"
)

// clock is a test clock both leases read.
type clock struct {
	mu sync.Mutex // guards t
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// TestLease: one holder at a time; a contender takes an unrenewed lease
// only after a whole TTL on its own clock; the old holder's renewal is
// then refused by revision (it stops acting), and a release hands the
// lease over at the next step.
func TestLease(t *testing.T) {
	_, _, s := newStore(t, 1)
	ctx := ctxT(t, 20*time.Second)
	clk := &clock{t: time.Unix(1000, 0)}
	a, _ := s.NewLease("a", 2*time.Second, clk.now)
	b, _ := s.NewLease("b", 2*time.Second, clk.now)

	ra, err := a.Step(ctx)
	if err != nil || ra == 0 {
		t.Fatalf("a: %d %v", ra, err)
	}
	if rb, err := b.Step(ctx); err != nil || rb != 0 {
		t.Fatalf("b took a live lease: %d %v", rb, err)
	}
	clk.add(1500 * time.Millisecond)
	if ra, err = a.Step(ctx); err != nil || ra == 0 {
		t.Fatalf("a renew: %v", err)
	}
	clk.add(1500 * time.Millisecond) // a renewed 1.5 s ago: b saw the new revision now
	if rb, _ := b.Step(ctx); rb != 0 {
		t.Fatal("b took a lease renewed 1.5 s ago")
	}
	// a stops renewing (paused, partitioned): after a TTL on b's clock from
	// when b saw the last revision, b takes it.
	clk.add(499 * time.Millisecond) // 1.999 s after a's renewal
	if a.Held() == 0 {
		t.Fatal("a gave up before its TTL")
	}
	clk.add(time.Millisecond)
	if a.Held() != 0 {
		t.Fatal("a still acts a TTL after its last renewal")
	}
	clk.add(1499 * time.Millisecond) // 1.999 s after b first saw the revision
	if rb, _ := b.Step(ctx); rb != 0 {
		t.Fatal("b took the lease before a TTL")
	}
	clk.add(time.Millisecond)
	rb, err := b.Step(ctx)
	if err != nil || rb == 0 {
		t.Fatalf("b did not take the expired lease: %v", err)
	}
	// a wakes up: its renewal carries the old revision and is refused.
	if _, err := a.Step(ctx); !errors.Is(err, cluster.ErrLeaseLost) {
		t.Fatalf("stale renewal: %v", err)
	}
	if a.Held() != 0 {
		t.Fatal("a holds after losing")
	}
	// b releases: a takes over at once.
	if err := b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if ra, err := a.Step(ctx); err != nil || ra == 0 {
		t.Fatalf("a after release: %d %v", ra, err)
	}
}

// TestLeaseForged: a lease record that does not validate is taken over
// like a dead holder's (after a TTL), not obeyed forever.
func TestLeaseForged(t *testing.T) {
	_, ctl, s := newStore(t, 1)
	ctx := ctxT(t, 10*time.Second)
	if _, err := ctl.Conn().Request("$KV."+bus.BucketLeader+"."+cluster.LeaseKey, []byte(`{"holder":"x y","ttl_ms":-1}`), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Unix(1000, 0)}
	a, _ := s.NewLease("a", time.Second, clk.now)
	if r, _ := a.Step(ctx); r != 0 {
		t.Fatal("took a lease at once")
	}
	clk.add(time.Second)
	if r, err := a.Step(ctx); r == 0 || err != nil {
		t.Fatalf("forged lease not taken over: %v", err)
	}
	if s.BadRecords() == 0 {
		t.Fatal("forged lease not counted")
	}
}
