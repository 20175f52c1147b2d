package relay

import (
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/routes"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestTreeChangeNoDuplicates: a track's tree changes under traffic, with
// the commands applied in the worst order. A publishes, B and C
// subscribe. At first B-C is the cheap link and the tree is A -> B -> C
// (B holds for C); then A-C becomes cheap and the tree A -> B, A -> C.
// The new tree's commands are applied first (A now sends to C itself)
// and B's old forward is withdrawn only once C has seen copies from both
// parents: for that while C receives every packet twice. C's SFU still
// gets every packet exactly once, and C counts the copies it dropped as
// duplicates.
func TestTreeChangeNoDuplicates(t *testing.T) {
	ns := startNodes(t, nA, nB, nC)
	r := routes.New(routes.Config{})
	for id := range ns {
		r.AddNode(routes.NodeID(id))
	}
	links := func(ms map[[2]NodeID]float64) {
		for l, v := range ms {
			m := routes.Metrics{RTT: time.Duration(v * float64(time.Millisecond)), Up: true}
			r.Report(routes.NodeID(l[0]), routes.NodeID(l[1]), m)
			r.Report(routes.NodeID(l[1]), routes.NodeID(l[0]), m)
		}
	}
	need := []routes.NodeID{routes.NodeID(nB), routes.NodeID(nC)}
	tables := func() map[NodeID]map[NodeID]NodeID {
		out := map[NodeID]map[NodeID]NodeID{}
		for id := range ns {
			out[id] = map[NodeID]NodeID{}
			for d, v := range r.Table(routes.NodeID(id)) {
				out[id][NodeID(d)] = NodeID(v)
			}
		}
		return out
	}
	t0 := time.Now()
	links(map[[2]NodeID]float64{{nA, nB}: 10, {nA, nC}: 40, {nB, nC}: 1})
	r.Compute(t0)
	before, routesBefore := r.Tree(routes.NodeID(nA), need, routes.Tree{}), tables()
	links(map[[2]NodeID]float64{{nA, nB}: 10, {nA, nC}: 1, {nB, nC}: 40})
	r.Compute(t0.Add(time.Millisecond))
	r.Compute(t0.Add(10 * time.Second)) // past the routes' hold
	after, routesAfter := r.Tree(routes.NodeID(nA), need, before), tables()
	if got := before.Forward[routes.NodeID(nB)]; len(got) != 1 || got[0] != routes.NodeID(nC) {
		t.Fatalf("tree before: %v, want B holding for C", before.Forward)
	}
	if got := after.Forward[routes.NodeID(nB)]; len(got) != 0 || len(after.Forward[routes.NodeID(nA)]) != 2 {
		t.Fatalf("tree after: %v, want A sending to B and C", after.Forward)
	}
	// apply gives nodes ids their routes and their part of tree, one
	// node after the other as commands arrive
	apply := func(tree routes.Tree, tables map[NodeID]map[NodeID]NodeID, ids ...NodeID) {
		t.Helper()
		for _, id := range ids {
			ns[id].e.SetRoutes(1, tables[id])
			var dsts []NodeID
			for _, d := range tree.Forward[routes.NodeID(id)] {
				dsts = append(dsts, NodeID(d))
			}
			var err error
			if id == nA {
				err = ns[id].e.SetNeed(key, dsts)
			} else {
				err = ns[id].e.SetForward(key, dsts, true)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	apply(before, routesBefore, nA, nB, nC)

	// every delivered packet's index, per receiving node
	var mu sync.Mutex
	got := map[NodeID]map[uint32]int{nB: {}, nC: {}}
	for _, id := range []NodeID{nB, nC} {
		f := func(rtp []byte) {
			mu.Lock()
			got[id][binary.BigEndian.Uint32(rtp)]++
			mu.Unlock()
		}
		ns[id].sfu.onMedia.Store(&f)
	}
	const count = 3000
	sent := make(chan struct{})
	var sentN sync.WaitGroup
	sentN.Add(1)
	go func() { // bounded: count packets, 10 per millisecond tick
		defer sentN.Done()
		defer close(sent)
		tk := time.NewTicker(time.Millisecond)
		defer tk.Stop()
		rtp := make([]byte, 400)
		for i := uint32(0); i < count; {
			<-tk.C
			for j := 0; j < 10 && i < count; j++ {
				binary.BigEndian.PutUint32(rtp, i)
				ns[nA].e.Send(key, 0, rtp)
				i++
			}
		}
	}()
	t.Cleanup(sentN.Wait)
	delivered := func(id NodeID) int {
		mu.Lock()
		defer mu.Unlock()
		return len(got[id])
	}
	dups := func() float64 { return ns[nC].metric(t, "traverse_relay_dropped_total", "reason", "duplicate") }
	testkit.WaitFor(t, 10*time.Second, "C receiving through B", func() bool { return delivered(nC) >= count/5 })
	apply(after, routesAfter, nA) // A sends to C too: C has two parents
	// twice: a packet delivered twice (what happens without the windows)
	twice := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, n := range got[nC] {
			if n > 1 {
				return true
			}
		}
		return false
	}
	testkit.WaitFor(t, 10*time.Second, "copies from both parents at C", func() bool { return dups() >= 20 || twice() })
	apply(after, routesAfter, nB, nC) // B withdraws its forward: the tree is the new one
	<-sent
	testkit.WaitFor(t, 10*time.Second, "every packet at B and C", func() bool {
		return delivered(nB) == count && delivered(nC) == count
	})
	mu.Lock()
	defer mu.Unlock()
	for _, id := range []NodeID{nB, nC} {
		for i, n := range got[id] {
			if n != 1 {
				t.Errorf("node %d's SFU got packet %d %d times", id, i, n)
			}
		}
	}
	if d := dups(); d < 20 {
		t.Errorf("C counted %v duplicates, want the copies of the overlap", d)
	}
	t.Logf("C dropped %v duplicates during the overlap", dups())
}
