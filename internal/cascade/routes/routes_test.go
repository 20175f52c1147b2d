package routes

import (
	"math/rand/v2"
	"testing"
	"time"
)

const (
	A NodeID = 1
	B NodeID = 2
	C NodeID = 3
	D NodeID = 4
)

func ms(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }

// triangle: A-C direct 10 ms, A-B and B-C 8 ms each (16 ms through B).
func triangle(r *Router, acLoss float64) {
	for _, n := range []NodeID{A, B, C} {
		r.AddNode(n)
	}
	both := func(x, y NodeID, m Metrics) { r.Report(x, y, m); r.Report(y, x, m) }
	both(A, B, Metrics{RTT: ms(8), Up: true})
	both(B, C, Metrics{RTT: ms(8), Up: true})
	both(A, C, Metrics{RTT: ms(10), Loss: acLoss, Up: true})
}

func TestShortestPaths(t *testing.T) {
	r := New(Config{})
	triangle(r, 0)
	r.Compute(time.Unix(0, 0))
	for _, c := range []struct{ n, d, want NodeID }{{A, C, C}, {C, A, A}, {A, B, B}, {B, C, C}, {B, A, A}} {
		if nh, ok := r.NextHop(c.n, c.d); !ok || nh != c.want {
			t.Errorf("%d -> %d: next hop %d (%v), want %d", c.n, c.d, nh, ok, c.want)
		}
	}
	if len(r.Table(A)) != 2 {
		t.Errorf("table of A: %v", r.Table(A))
	}
}

// TestLossMovesRoutesOnceEachWay: the A-C link's loss rises from 0 to
// 30 % over reports every 500 ms; the routes between A and C move to B
// within 5 s of the rise, once; when the loss falls back to 0 they come
// back, once.
func TestLossMovesRoutesOnceEachWay(t *testing.T) {
	r := New(Config{})
	triangle(r, 0)
	now := time.Unix(0, 0)
	r.Compute(now)
	changes := map[NodeID]int{}
	prev := map[NodeID]NodeID{A: C, C: A}
	step := func(loss float64) {
		now = now.Add(500 * time.Millisecond)
		m := Metrics{RTT: ms(10), Loss: loss, Up: true}
		r.Report(A, C, m)
		r.Report(C, A, m)
		r.Compute(now)
		for n, d := range map[NodeID]NodeID{A: C, C: A} {
			nh, _ := r.NextHop(n, d)
			if nh != prev[n] {
				changes[n]++
				prev[n] = nh
			}
		}
	}
	// the rise: 0 to 30 % in 1 s, then 30 % for 4 s
	rise := now
	for _, l := range []float64{0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3} {
		step(l)
		if prev[A] == B && prev[C] == B {
			break
		}
	}
	if prev[A] != B || prev[C] != B {
		t.Fatalf("routes still on the lossy link %v after the rise", now.Sub(rise))
	}
	if d := now.Sub(rise); d > 5*time.Second {
		t.Fatalf("routes moved after %v, want within 5 s", d)
	}
	t.Logf("routes moved off the lossy link %v after the rise began", now.Sub(rise))
	// noisy 30 % for 10 s: nothing moves
	rng := rand.New(rand.NewPCG(1, 1))
	for i := 0; i < 20; i++ {
		step(0.25 + 0.1*rng.Float64())
	}
	// recovery, through noisy low loss
	for _, l := range []float64{0.2, 0.1, 0.05, 0.01, 0, 0.002, 0, 0.001, 0, 0, 0, 0, 0, 0, 0, 0} {
		step(l)
	}
	if prev[A] != C || prev[C] != A {
		t.Fatalf("routes did not come back: A->%d C->%d", prev[A], prev[C])
	}
	if changes[A] != 2 || changes[C] != 2 {
		t.Fatalf("route changes A %d, C %d: want exactly one each way", changes[A], changes[C])
	}
}

// TestNoFlapOnNearTies: two paths whose costs cross back and forth within
// the margin keep the first choice.
func TestNoFlapOnNearTies(t *testing.T) {
	r := New(Config{})
	for _, n := range []NodeID{A, B, C, D} {
		r.AddNode(n)
	}
	both := func(x, y NodeID, rtt float64) {
		m := Metrics{RTT: ms(rtt), Up: true}
		r.Report(x, y, m)
		r.Report(y, x, m)
	}
	now := time.Unix(0, 0)
	both(A, B, 5)
	both(B, D, 5)
	both(A, C, 5)
	both(C, D, 5.2)
	r.Compute(now)
	first, _ := r.NextHop(A, D)
	rng := rand.New(rand.NewPCG(2, 2))
	for i := 0; i < 200; i++ {
		now = now.Add(500 * time.Millisecond)
		both(B, D, 4.6+0.8*rng.Float64())
		both(C, D, 4.6+0.8*rng.Float64())
		r.Compute(now)
		if nh, _ := r.NextHop(A, D); nh != first {
			t.Fatalf("report %d: A->D moved from %d to %d", i, first, nh)
		}
	}
}

func TestDeadLinkMovesAtOnceAndRemovedNodeDisappears(t *testing.T) {
	r := New(Config{})
	triangle(r, 0)
	now := time.Unix(0, 0)
	r.Compute(now)
	r.Report(A, C, Metrics{})
	r.Report(C, A, Metrics{})
	r.Compute(now.Add(time.Millisecond))
	if nh, _ := r.NextHop(A, C); nh != B {
		t.Fatalf("A->C %d after the link died, want B at once", nh)
	}
	r.RemoveNode(B)
	r.Compute(now.Add(2 * time.Millisecond))
	for _, n := range []NodeID{A, C} {
		for d, nh := range r.Table(n) {
			if d == B || nh == B {
				t.Fatalf("table of %d still names the removed node: %v", n, r.Table(n))
			}
		}
	}
	if len(r.Table(A)) != 0 || len(r.Table(B)) != 0 {
		t.Fatalf("A has no usable link left: %v; B is gone: %v", r.Table(A), r.Table(B))
	}
	// a new node gets routes on the next computation
	r.AddNode(D)
	r.Report(A, D, Metrics{RTT: ms(3), Up: true})
	r.Report(D, A, Metrics{RTT: ms(3), Up: true})
	r.Compute(now.Add(3 * time.Millisecond))
	if nh, ok := r.NextHop(D, A); !ok || nh != A {
		t.Fatalf("new node's routes: %v", r.Table(D))
	}
}

// TestNoLoopsUnderChurn: random costs and dead links over a 6-node mesh;
// following any table from any node always reaches the destination.
func TestNoLoopsUnderChurn(t *testing.T) {
	r := New(Config{Hold: time.Second})
	nodes := []NodeID{1, 2, 3, 4, 5, 6}
	for _, n := range nodes {
		r.AddNode(n)
	}
	rng := rand.New(rand.NewPCG(3, 3))
	now := time.Unix(0, 0)
	for round := 0; round < 300; round++ {
		for _, x := range nodes {
			for _, y := range nodes {
				if x < y && rng.IntN(3) == 0 {
					m := Metrics{RTT: ms(1 + 30*rng.Float64()), Loss: 0.2 * rng.Float64(), Up: rng.IntN(8) != 0}
					r.Report(x, y, m)
					r.Report(y, x, m)
				}
			}
		}
		now = now.Add(300 * time.Millisecond)
		r.Compute(now)
		for _, n := range nodes {
			for d := range r.Table(n) {
				if c := r.pathCost(n, d, len(nodes)); c != c || c > 1e300 {
					t.Fatalf("round %d: %d -> %d broken path (cost %v)", round, n, d, c)
				}
			}
		}
	}
}
