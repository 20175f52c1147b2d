// Package routes computes the cascade's route tables: for every node,
// destination node -> next hop, by shortest paths over the measured cost of
// each link, with hysteresis so that routes do not flap. It is pure: the
// caller (the controller) feeds it nodes and link reports and a clock, and
// reads the tables; it does no I/O.
//
// A link's cost, in milliseconds (Cost):
//
//	cost = RTT + 2·jitter + LossPenalty · loss/(1-loss)
//
// RTT and jitter are what the link's prober measured; a lost packet costs
// a repair (FEC overhead or a NACK round trip and playout delay), priced at
// LossPenalty (default 200 ms) per expected retransmission. A link that is
// down or loses MaxLoss (default 50 %) or more is unusable.
//
// Hysteresis: a node keeps its next hop to a destination while the path it
// leads to (following every node's current tables) still reaches the
// destination, until the shortest path is cheaper by more than Margin
// (default 10 %) of the current path's cost and by at least MinGain
// (default 1 ms), continuously for Hold (default 2 s). A broken path (a
// link down, a node removed, a loop) is replaced at once.
package routes

import (
	"math"
	"slices"
	"time"

	"github.com/traverse-rtc/traverse/internal/config"
)

// NodeID names a node (the relay protocol's node id).
type NodeID uint32

// Metrics are what a node measured of its link to a neighbour.
type Metrics struct {
	RTT    time.Duration
	Jitter time.Duration
	Loss   float64 // 0..1
	Up     bool
}

// Config tunes a Router. Zero values take the defaults.
type Config struct {
	// LossPenalty prices loss in the link cost (default 200 ms).
	LossPenalty time.Duration
	// MaxLoss makes a link unusable at or above this loss (default 0.5).
	MaxLoss float64
	// Margin and MinGain: how much cheaper a new path must be to replace
	// the current one (defaults 0.1 and 1 ms).
	Margin  float64
	MinGain time.Duration
	// Hold is how long the new path must stay that much cheaper (default
	// 2 s): the time a degrading link keeps its routes, and what stops a
	// noisy link from flapping them.
	Hold time.Duration
	// HopLimit is the most links a track's distribution tree puts between
	// the publisher's node and any node (Tree; default 8, the relay's hop
	// limit).
	HopLimit int
}

func (c *Config) defaults() {
	config.Default(&c.LossPenalty, 200*time.Millisecond)
	config.Default(&c.MaxLoss, 0.5)
	config.Default(&c.Margin, 0.1)
	config.Default(&c.MinGain, time.Millisecond)
	config.Default(&c.Hold, 2*time.Second)
	config.Default(&c.HopLimit, 8)
}

// Cost is a link's cost in milliseconds under cfg; +Inf when unusable.
func (c Config) Cost(m Metrics) float64 {
	c.defaults()
	if !m.Up || m.Loss >= c.MaxLoss || m.Loss < 0 {
		return math.Inf(1)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return ms(m.RTT) + 2*ms(m.Jitter) + ms(c.LossPenalty)*m.Loss/(1-m.Loss)
}

type key struct{ node, dst NodeID }

// Router holds the graph and the current tables. It is not safe for
// concurrent use.
type Router struct {
	cfg     Config
	nodes   map[NodeID]bool
	links   map[[2]NodeID]float64 // from -> to: cost
	next    map[key]NodeID
	pending map[key]time.Time
}

// New returns an empty Router.
func New(cfg Config) *Router {
	cfg.defaults()
	return &Router{cfg: cfg, nodes: map[NodeID]bool{}, links: map[[2]NodeID]float64{},
		next: map[key]NodeID{}, pending: map[key]time.Time{}}
}

// AddNode adds a node (a node registering).
func (r *Router) AddNode(n NodeID) { r.nodes[n] = true }

// RemoveNode removes a node, its links and every route to or through it;
// the next Compute replaces routes that went through it.
func (r *Router) RemoveNode(n NodeID) {
	delete(r.nodes, n)
	for l := range r.links {
		if l[0] == n || l[1] == n {
			delete(r.links, l)
		}
	}
	for k := range r.next {
		if k.node == n || k.dst == n {
			delete(r.next, k)
			delete(r.pending, k)
		}
	}
}

// Report records what from measured of its link to to.
func (r *Router) Report(from, to NodeID, m Metrics) {
	if !r.nodes[from] || !r.nodes[to] || from == to {
		return
	}
	r.links[[2]NodeID{from, to}] = r.cfg.Cost(m)
}

func (r *Router) cost(from, to NodeID) float64 {
	c, ok := r.links[[2]NodeID{from, to}]
	if !ok {
		return math.Inf(1)
	}
	return c
}

// Nodes returns the nodes, sorted.
func (r *Router) Nodes() []NodeID {
	ns := make([]NodeID, 0, len(r.nodes))
	for n := range r.nodes {
		ns = append(ns, n)
	}
	slices.Sort(ns)
	return ns
}

// shortest returns, for every node, its distance to dst and its next hop
// on a shortest path (Dijkstra over the reversed links; ties go to the
// lower node id so equal paths do not alternate).
func (r *Router) shortest(nodes []NodeID, dst NodeID) (map[NodeID]float64, map[NodeID]NodeID) {
	dist := map[NodeID]float64{dst: 0}
	hop := map[NodeID]NodeID{}
	done := map[NodeID]bool{}
	for {
		u, best := NodeID(0), math.Inf(1)
		found := false
		for _, n := range nodes {
			if d, ok := dist[n]; ok && !done[n] && (d < best || !found) {
				u, best, found = n, d, true
			}
		}
		if !found || math.IsInf(best, 1) {
			break
		}
		done[u] = true
		for _, v := range nodes {
			if done[v] {
				continue
			}
			c := r.cost(v, u)
			if math.IsInf(c, 1) {
				continue
			}
			d := best + c
			old, ok := dist[v]
			if !ok || d < old || d == old && u < hop[v] {
				dist[v], hop[v] = d, u
			}
		}
	}
	return dist, hop
}

// pathCost follows the current tables from n to dst and returns the cost,
// +Inf when the path is broken (a missing route, an unusable link, a loop).
func (r *Router) pathCost(n, dst NodeID, limit int) float64 {
	total := 0.0
	for i := 0; i < limit; i++ {
		if n == dst {
			return total
		}
		nh, ok := r.next[key{n, dst}]
		if !ok {
			return math.Inf(1)
		}
		total += r.cost(n, nh)
		if math.IsInf(total, 1) {
			return total
		}
		n = nh
	}
	return math.Inf(1)
}

// Compute recomputes every table at now and returns how many routes
// changed (added, moved or removed).
func (r *Router) Compute(now time.Time) int {
	nodes := r.Nodes()
	changes := 0
	for _, dst := range nodes {
		dist, hop := r.shortest(nodes, dst)
		for _, n := range nodes {
			if n == dst {
				continue
			}
			k := key{n, dst}
			cur, has := r.next[k]
			best, reach := hop[n]
			curCost := r.pathCost(n, dst, len(nodes))
			switch {
			case !reach:
				if has {
					delete(r.next, k)
					changes++
				}
				delete(r.pending, k)
			case !has || math.IsInf(curCost, 1):
				if !has || cur != best {
					changes++
				}
				r.next[k] = best
				delete(r.pending, k)
			case cur == best:
				delete(r.pending, k)
			default:
				gain := curCost - dist[n]
				ms := float64(r.cfg.MinGain) / float64(time.Millisecond)
				if gain > r.cfg.Margin*curCost && gain >= ms {
					since, ok := r.pending[k]
					if !ok {
						r.pending[k] = now
					} else if now.Sub(since) >= r.cfg.Hold {
						r.next[k] = best
						delete(r.pending, k)
						changes++
					}
				} else {
					delete(r.pending, k)
				}
			}
		}
		changes += r.repairLoops(nodes, dst, hop)
	}
	return changes
}

// repairLoops puts every node of a loop (nodes whose kept routes lead to
// each other) on its shortest-path next hop. Shortest-path next hops form
// a tree, so this ends.
func (r *Router) repairLoops(nodes []NodeID, dst NodeID, hop map[NodeID]NodeID) int {
	changes := 0
	for again := true; again; {
		again = false
		for _, n := range nodes {
			seen := map[NodeID]bool{}
			m, loop := n, false
			for m != dst {
				if seen[m] {
					loop = true
					break
				}
				seen[m] = true
				nh, ok := r.next[key{m, dst}]
				if !ok {
					break
				}
				m = nh
			}
			if !loop {
				continue
			}
			// m is on a loop: move each node of it to the tree
			for x := m; ; {
				k := key{x, dst}
				nh := r.next[k]
				if t, ok := hop[x]; ok && t != nh {
					r.next[k] = t
					changes++
				} else if !ok {
					delete(r.next, k)
					changes++
				}
				delete(r.pending, k)
				x = nh
				if x == m {
					break
				}
			}
			again = true
		}
	}
	return changes
}

// NextHop is node's next hop to dst.
func (r *Router) NextHop(node, dst NodeID) (NodeID, bool) {
	nh, ok := r.next[key{node, dst}]
	return nh, ok
}

// Table returns node's table: destination -> next hop.
func (r *Router) Table(node NodeID) map[NodeID]NodeID {
	t := map[NodeID]NodeID{}
	for k, nh := range r.next {
		if k.node == node {
			t[k.dst] = nh
		}
	}
	return t
}
