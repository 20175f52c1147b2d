package routes

import (
	"math"
	"slices"
	"time"
)

// Path returns the nodes a message from node to dst crosses by the current
// tables (node first, dst last) and the path's cost; ok is false when the
// path is broken (a missing route, an unusable link, a loop).
func (r *Router) Path(node, dst NodeID) (path []NodeID, cost float64, ok bool) {
	path = []NodeID{node}
	for n := node; n != dst; {
		nh, has := r.next[key{n, dst}]
		if !has || slices.Contains(path, nh) {
			return nil, math.Inf(1), false
		}
		cost += r.cost(n, nh)
		if math.IsInf(cost, 1) {
			return nil, cost, false
		}
		path = append(path, nh)
		n = nh
	}
	return path, cost, true
}

// Tree is how one track reaches the nodes that need it: Forward[h] are
// the nodes holder h sends each packet to (addressed to them; the hops
// between forward by their tables). The holders are the root (the
// publisher's node) and every node the track is sent to. Unreached are
// the needing nodes no path leads to.
type Tree struct {
	Forward   map[NodeID][]NodeID
	Unreached []NodeID
	// Shared counts the needs reached over a link the track already
	// crossed (tables that disagree); 0 with consistent tables.
	Shared int
}

// segment is one addressed leg of a tree: from a holder to a node it
// sends to, along path (from first, to last).
type segment struct{ path []NodeID }

// Tree computes the distribution tree of a track published on root and
// needed by need, greedily: each round the needing node nearest (by the
// cost of the routed path) to any node the track already crosses is
// joined to it. A new leg starts at the last node of its routed path that
// the track already crosses, so the rest of that path is new to the tree
// and the track crosses every link at most once. When that node is only a
// hop of an earlier leg (between a holder and the node it sends to), it
// becomes a holder and the leg is cut in two there, which keeps the links
// the same when the holder's route to the hop is the leg's beginning; when
// it is not (the tables do not agree, as hysteresis may leave them), that
// start is not taken. A need that no start reaches without a link twice
// is sent from its nearest holder anyway (Shared counts them): the track
// reaches it over a link it already crosses. Costs within the routes'
// hysteresis of each other are a tie (tie): the previous holder wins it,
// then the holder fewer links from root; exact ties go to the lower node
// ids, so the tree is the same for the same tables. A need that only a
// leg putting it more than the router's HopLimit links from root would
// reach is Unreached: the relay's hop limit would drop it on the way.
//
// prev is the track's previous tree (zero: none): a node keeps the holder
// it had while that holder is still a candidate, until another is nearer
// by more than the router's Margin and MinGain (the routes' hysteresis,
// without the hold), so that the tree does not move with every report of
// near-equal links.
func (r *Router) Tree(root NodeID, need []NodeID, prev Tree) Tree {
	t := Tree{Forward: map[NodeID][]NodeID{}}
	parent := map[NodeID]NodeID{}
	for h, fs := range prev.Forward {
		for _, f := range fs {
			parent[f] = h
		}
	}
	minGain := float64(r.cfg.MinGain) / float64(time.Millisecond)
	// on: every node the track crosses -> the leg it is a hop of (-1 for
	// holders).
	on := map[NodeID]int{root: -1}
	// depth: links from the root to each node the track crosses; a leg
	// that would take a node beyond the hop limit is not taken.
	depth := map[NodeID]int{root: 0}
	deep := func(h NodeID, p []NodeID) bool { return depth[h]+len(p)-1 > r.cfg.HopLimit }
	var legs []segment
	rest := slices.Clone(need)
	slices.Sort(rest)
	rest = slices.Compact(rest)
	rest = slices.DeleteFunc(rest, func(n NodeID) bool { return n == root || !r.nodes[n] })
	for len(rest) > 0 {
		crossed := make([]NodeID, 0, len(on))
		for n := range on {
			crossed = append(crossed, n)
		}
		slices.Sort(crossed)
		bestCost, bestI, fallI := math.Inf(1), -1, -1
		bestKey := [2]int{}
		var bestPath, fallPath []NodeID
		fallCost := math.Inf(1)
		for i, n := range rest {
			for _, h := range crossed {
				p, c, ok := r.Path(h, n)
				if !ok || deep(h, p) {
					continue
				}
				if on[h] < 0 && c < fallCost {
					fallCost, fallI, fallPath = c, i, p
				}
				// the leg starts at the last node of p the track crosses
				s := 0
				for j, x := range p {
					if _, in := on[x]; in {
						s = j
					}
				}
				if s > 0 {
					continue // the candidate from that node is tried on its own
				}
				if li := on[h]; li >= 0 && !r.cuttable(legs[li].path, h) {
					continue
				}
				key := [2]int{1, depth[h]}
				if ph, ok := parent[n]; ok && ph == h {
					c -= max(r.cfg.Margin*c, minGain)
					key[0] = 0
				}
				if bestI < 0 || c < bestCost-r.tie(c, bestCost) ||
					c <= bestCost+r.tie(c, bestCost) && (key[0] < bestKey[0] || key[0] == bestKey[0] && key[1] < bestKey[1]) {
					bestCost, bestI, bestPath, bestKey = c, i, p, key
				}
			}
			if _, in := on[n]; in && r.cuttable(legs[on[n]].path, n) {
				// n is a hop of a leg already: it costs nothing
				bestCost, bestI, bestPath = 0, i, []NodeID{n}
				break
			}
		}
		if bestI < 0 {
			if fallI < 0 {
				t.Unreached = append(t.Unreached, rest...)
				break
			}
			n := rest[fallI]
			rest = slices.Delete(rest, fallI, fallI+1)
			t.Shared++
			t.Forward[fallPath[0]] = append(t.Forward[fallPath[0]], n)
			legs = append(legs, segment{path: fallPath})
			setDepth(depth, fallPath)
			for _, x := range fallPath[1 : len(fallPath)-1] {
				if _, in := on[x]; !in {
					on[x] = len(legs) - 1
				}
			}
			on[n] = -1 // a hop of an uncuttable leg too, maybe: it forwards that leg's copy by its table
			continue
		}
		n := rest[bestI]
		rest = slices.Delete(rest, bestI, bestI+1)
		p := bestPath
		from := p[0]
		if li := on[from]; li >= 0 {
			// from is a hop of leg li: it becomes a holder, the leg cut there
			leg := legs[li].path
			cut := slices.Index(leg, from)
			head, tail := leg[:cut+1], leg[cut:]
			fwd := t.Forward[head[0]]
			fwd[slices.Index(fwd, tail[len(tail)-1])] = from
			t.Forward[from] = append(t.Forward[from], tail[len(tail)-1])
			legs[li].path = head
			legs = append(legs, segment{path: tail})
			for _, x := range tail[1 : len(tail)-1] {
				on[x] = len(legs) - 1
			}
			on[from] = -1
		}
		if len(p) == 1 {
			continue // n was a hop, now a holder
		}
		t.Forward[from] = append(t.Forward[from], n)
		legs = append(legs, segment{path: p})
		setDepth(depth, p)
		for _, x := range p[1 : len(p)-1] {
			on[x] = len(legs) - 1
		}
		on[n] = -1
	}
	for h := range t.Forward {
		slices.Sort(t.Forward[h])
	}
	return t
}

// tie is how close two candidates' costs are for the tree to call them
// equal: the routes' hysteresis (Margin of the lower, at least MinGain).
// Among equals the previous holder wins, then the holder nearer the root
// (fewer links from the publisher, so no detour through a node that
// merely holds the track: on links of equal cost the tree does not hang
// a node under another holder by the noise of the probes).
func (r *Router) tie(a, b float64) float64 {
	return max(r.cfg.Margin*min(a, b), float64(r.cfg.MinGain)/float64(time.Millisecond))
}

// setDepth records the depth of the nodes of a new leg path, from its
// first node's; a node already on the tree keeps its own.
func setDepth(depth map[NodeID]int, path []NodeID) {
	for i, x := range path[1:] {
		if _, ok := depth[x]; !ok {
			depth[x] = depth[path[0]] + i + 1
		}
	}
}

// cuttable reports whether hop x of leg (holder first) can become a
// holder without the track's links changing: the holder's route to x is
// the leg's beginning.
func (r *Router) cuttable(leg []NodeID, x NodeID) bool {
	p, _, ok := r.Path(leg[0], x)
	return ok && slices.Equal(p, leg[:slices.Index(leg, x)+1])
}
