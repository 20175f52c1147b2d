package routes

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// graph builds a router from undirected links (both ways, RTT in ms) and
// computes its tables.
func graph(nodes []NodeID, links map[[2]NodeID]float64) *Router {
	r := New(Config{})
	for _, n := range nodes {
		r.AddNode(n)
	}
	for l, c := range links {
		r.Report(l[0], l[1], Metrics{RTT: ms(c), Up: true})
		r.Report(l[1], l[0], Metrics{RTT: ms(c), Up: true})
	}
	r.Compute(time.Unix(0, 0))
	return r
}

const E NodeID = 5

// TestTreeNearestHolder: each needing node is served by the nearest node
// the track already crosses, not necessarily the publisher's.
func TestTreeNearestHolder(t *testing.T) {
	for _, c := range []struct {
		name      string
		nodes     []NodeID
		links     map[[2]NodeID]float64
		root      NodeID
		need      []NodeID
		want      map[NodeID][]NodeID
		unreached []NodeID
	}{
		{name: "B and C close, both far from A: A sends once, to B; B to C",
			nodes: []NodeID{A, B, C}, links: map[[2]NodeID]float64{{A, B}: 10, {A, C}: 10, {B, C}: 1},
			root: A, need: []NodeID{B, C}, want: map[NodeID][]NodeID{A: {B}, B: {C}}},
		{name: "all close to A: A sends to each",
			nodes: []NodeID{A, B, C}, links: map[[2]NodeID]float64{{A, B}: 1, {A, C}: 1, {B, C}: 10},
			root: A, need: []NodeID{B, C}, want: map[NodeID][]NodeID{A: {B, C}}},
		{name: "chain: B only crosses, C holds for D",
			nodes: []NodeID{A, B, C, D}, links: map[[2]NodeID]float64{{A, B}: 1, {B, C}: 1, {C, D}: 1},
			root: A, need: []NodeID{D, C}, want: map[NodeID][]NodeID{A: {C}, C: {D}}},
		{name: "Y: the hop B becomes the holder for C and D",
			nodes: []NodeID{A, B, C, D}, links: map[[2]NodeID]float64{{A, B}: 5, {B, C}: 1, {B, D}: 1},
			root: A, need: []NodeID{C, D}, want: map[NodeID][]NodeID{A: {B}, B: {C, D}}},
		{name: "a need that is a hop of a leg is cut out of it",
			nodes: []NodeID{A, B, C, D}, links: map[[2]NodeID]float64{{A, B}: 1, {B, C}: 1, {C, D}: 1},
			root: A, need: []NodeID{D, B}, want: map[NodeID][]NodeID{A: {B}, B: {D}}},
		{name: "an unreachable need is left out",
			nodes: []NodeID{A, B, C, E}, links: map[[2]NodeID]float64{{A, B}: 1, {B, C}: 1},
			root: A, need: []NodeID{C, E, A, C}, want: map[NodeID][]NodeID{A: {C}}, unreached: []NodeID{E}},
		{name: "nothing needed", nodes: []NodeID{A, B}, links: map[[2]NodeID]float64{{A, B}: 1},
			root: A, want: map[NodeID][]NodeID{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := graph(c.nodes, c.links).Tree(c.root, c.need, Tree{})
			if len(tr.Forward) != len(c.want) {
				t.Fatalf("forward %v, want %v", tr.Forward, c.want)
			}
			for h, w := range c.want {
				if !slices.Equal(tr.Forward[h], w) {
					t.Fatalf("forward %v, want %v", tr.Forward, c.want)
				}
			}
			if !slices.Equal(tr.Unreached, c.unreached) {
				t.Fatalf("unreached %v, want %v", tr.Unreached, c.unreached)
			}
		})
	}
}

// linkLoads counts how many copies of one packet cross each link when
// every holder sends one message to each node it forwards to, and each
// hop forwards by its table grouping destinations by next hop (the relay
// endpoint's rule). It returns the loads and the nodes that received it.
func linkLoads(r *Router, root NodeID, fwd map[NodeID][]NodeID) (map[[2]NodeID]int, map[NodeID]bool) {
	loads := map[[2]NodeID]int{}
	got := map[NodeID]bool{}
	var deliver func(n NodeID, dsts []NodeID, hops int)
	deliver = func(n NodeID, dsts []NodeID, hops int) {
		if hops > 16 {
			return
		}
		groups := map[NodeID][]NodeID{}
		for _, d := range dsts {
			if d == n {
				continue
			}
			if nh, ok := r.NextHop(n, d); ok {
				groups[nh] = append(groups[nh], d)
			}
		}
		for nh, g := range groups {
			loads[[2]NodeID{n, nh}]++
			if slices.Contains(g, nh) {
				got[nh] = true
				// a holder forwards what it receives
				g = append(slices.DeleteFunc(slices.Clone(g), func(x NodeID) bool { return x == nh }), fwd[nh]...)
			}
			deliver(nh, g, hops+1)
		}
	}
	deliver(root, fwd[root], 0)
	return loads, got
}

// TestTreeOncePerLink: over random graphs, with tables perturbed the way
// hysteresis keeps older routes, the tree reaches every reachable need
// and no link carries a packet twice (with perturbed tables, at most once
// more per need Tree reports as Shared); with perturbed tables, sending
// from the publisher's node alone to every need (destination routing
// without holders) carries a packet twice over a link in some graphs.
func TestTreeOncePerLink(t *testing.T) {
	for _, perturb := range []bool{false, true} {
		t.Run(map[bool]string{false: "computed tables", true: "perturbed tables"}[perturb], func(t *testing.T) {
			treeOncePerLink(t, perturb)
		})
	}
}

func treeOncePerLink(t *testing.T, perturb bool) {
	rng := rand.New(rand.NewPCG(1, 2))
	doubled, shared := 0, 0
	for trial := range 300 {
		n := 4 + rng.IntN(6)
		var nodes []NodeID
		for i := 1; i <= n; i++ {
			nodes = append(nodes, NodeID(i))
		}
		links := map[[2]NodeID]float64{}
		for i := 1; i <= n; i++ {
			for j := i + 1; j <= n; j++ {
				if rng.IntN(3) > 0 {
					links[[2]NodeID{NodeID(i), NodeID(j)}] = 1 + float64(rng.IntN(20))
				}
			}
		}
		r := graph(nodes, links)
		// Perturb: some routes move to another neighbour (kept routes);
		// Path refuses the loops this may make.
		for k := range r.next {
			if perturb && rng.IntN(5) == 0 {
				nb := []NodeID{}
				for _, m := range nodes {
					if m != k.node && r.cost(k.node, m) < 1e9 {
						nb = append(nb, m)
					}
				}
				if len(nb) > 0 {
					r.next[k] = nb[rng.IntN(len(nb))]
				}
			}
		}
		root := nodes[rng.IntN(n)]
		var need []NodeID
		for _, m := range nodes {
			if m != root && rng.IntN(2) == 0 {
				need = append(need, m)
			}
		}
		tr := r.Tree(root, need, Tree{})
		loads, got := linkLoads(r, root, tr.Forward)
		shared += tr.Shared
		for l, c := range loads {
			if c > 1+tr.Shared {
				for h, fs := range tr.Forward {
					for _, f := range fs {
						p, _, _ := r.Path(h, f)
						t.Logf("%d->%d path %v", h, f, p)
					}
				}
				t.Fatalf("trial %d: root %d link %v carries %d copies; forward %v", trial, root, l, c, tr.Forward)
			}
		}
		for _, m := range need {
			if !got[m] && !slices.Contains(tr.Unreached, m) {
				t.Fatalf("trial %d: need %d neither reached nor unreached; forward %v", trial, m, tr.Forward)
			}
			if got[m] == slices.Contains(tr.Unreached, m) {
				t.Fatalf("trial %d: need %d reached %v, listed unreached %v", trial, m, got[m], tr.Unreached)
			}
		}
		reachable := slices.DeleteFunc(slices.Clone(need), func(m NodeID) bool { return slices.Contains(tr.Unreached, m) })
		old, _ := linkLoads(r, root, map[NodeID][]NodeID{root: reachable})
		for _, c := range old {
			if c > 1 {
				doubled++
				break
			}
		}
	}
	if !perturb && shared > 0 {
		t.Fatalf("%d needs shared a link with the computed tables", shared)
	}
	if perturb && doubled == 0 {
		t.Fatal("destination routing from the publisher never doubled a link: the test shows nothing")
	}
	t.Logf("destination routing alone doubled a link in %d of 300 graphs; %d needs of the tree shared a link", doubled, shared)
}

// TestTreeHysteresis: a node keeps its holder until another is nearer by
// more than the margin (10 %) and 1 ms.
func TestTreeHysteresis(t *testing.T) {
	prev := Tree{Forward: map[NodeID][]NodeID{A: {B, C}}}
	for _, c := range []struct {
		name       string
		ab, ac, bc float64
		prev       Tree
		want       map[NodeID][]NodeID
	}{
		{"no previous tree, B nearer by 0.9 ms: a near-tie, C from the root's side, A", 1, 1.5, 0.6, Tree{}, map[NodeID][]NodeID{A: {B, C}}},
		{"no previous tree, equal links: C from A, not through B", 1, 1, 1, Tree{}, map[NodeID][]NodeID{A: {B, C}}},
		{"no previous tree, B nearer by 1.2 ms: C to its nearest, B", 1.5, 2, 0.8, Tree{}, map[NodeID][]NodeID{A: {B}, B: {C}}},
		{"B nearer by 0.9 ms: C stays with A", 1, 1.5, 0.6, prev, map[NodeID][]NodeID{A: {B, C}}},
		{"B nearer by 1.2 ms: C moves to B", 1, 1.5, 0.3, prev, map[NodeID][]NodeID{A: {B}, B: {C}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := graph([]NodeID{A, B, C}, map[[2]NodeID]float64{{A, B}: c.ab, {A, C}: c.ac, {B, C}: c.bc})
			tr := r.Tree(A, []NodeID{B, C}, c.prev)
			if len(tr.Forward) != len(c.want) {
				t.Fatalf("forward %v, want %v", tr.Forward, c.want)
			}
			for h, w := range c.want {
				if !slices.Equal(tr.Forward[h], w) {
					t.Fatalf("forward %v, want %v", tr.Forward, c.want)
				}
			}
		})
	}
}

// TestTreeHopLimit: a chain of 11 nodes: the track reaches the node 8
// links from its publisher's (holders or not, the relay's hop limit
// counts every link), not the ones beyond.
func TestTreeHopLimit(t *testing.T) {
	var nodes []NodeID
	links := map[[2]NodeID]float64{}
	for i := NodeID(1); i <= 11; i++ {
		nodes = append(nodes, i)
		if i > 1 {
			links[[2]NodeID{i - 1, i}] = 1
		}
	}
	r := graph(nodes, links)
	tr := r.Tree(1, []NodeID{5, 9, 10, 11}, Tree{})
	if !slices.Equal(tr.Unreached, []NodeID{10, 11}) {
		t.Fatalf("unreached %v, want 10 and 11", tr.Unreached)
	}
	if !slices.Equal(tr.Forward[1], []NodeID{5}) || !slices.Equal(tr.Forward[5], []NodeID{9}) {
		t.Fatalf("forward %v", tr.Forward)
	}
}
