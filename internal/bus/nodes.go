package bus

import (
	"sort"
	"sync"
	"time"
)

// NodeTable is the set of live SFU nodes as their announcements tell it.
// Signal servers feed it from SubscribeNodes and pick nodes from it. It is
// safe for concurrent use.
type NodeTable struct {
	// Expiry is how long a silent node is kept; NodeExpiry when zero.
	Expiry time.Duration

	mu    sync.Mutex // guards nodes
	nodes map[string]nodeEntry
}

type nodeEntry struct {
	a    NodeAnnounce
	seen time.Time
}

// Update records an announcement, received at now.
func (t *NodeTable) Update(a NodeAnnounce, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.nodes == nil {
		t.nodes = map[string]nodeEntry{}
	}
	t.nodes[a.Node] = nodeEntry{a: a, seen: now}
}

// Remove forgets a node.
func (t *NodeTable) Remove(node string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.nodes, node)
}

func (t *NodeTable) expiry() time.Duration {
	if t.Expiry <= 0 {
		return NodeExpiry
	}
	return t.Expiry
}

// Live returns the nodes heard from within Expiry of now, sorted by node
// id. Silent nodes stay in the table until Sweep removes them.
func (t *NodeTable) Live(now time.Time) []NodeAnnounce {
	exp := t.expiry()
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]NodeAnnounce, 0, len(t.nodes))
	for _, e := range t.nodes {
		if now.Sub(e.seen) > exp {
			continue
		}
		out = append(out, e.a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// Sweep removes the nodes not heard from within Expiry of now and returns
// their ids, sorted: the nodes that died since the last sweep. A node that
// announces again later is simply live again.
func (t *NodeTable) Sweep(now time.Time) []string {
	exp := t.expiry()
	t.mu.Lock()
	defer t.mu.Unlock()
	var gone []string
	for id, e := range t.nodes {
		if now.Sub(e.seen) > exp {
			delete(t.nodes, id)
			gone = append(gone, id)
		}
	}
	sort.Strings(gone)
	return gone
}

// Pick returns the least loaded live node that is not draining, preferring
// region when any node of that region is live; ok is false when there is
// none.
func (t *NodeTable) Pick(region string, now time.Time) (NodeAnnounce, bool) {
	live := t.Live(now)
	var best NodeAnnounce
	found := false
	better := func(a, b NodeAnnounce) bool {
		if region != "" && (a.Region == region) != (b.Region == region) {
			return a.Region == region
		}
		return a.Load.Peers < b.Load.Peers
	}
	for _, a := range live {
		if a.Draining {
			continue
		}
		if !found || better(a, best) {
			best, found = a, true
		}
	}
	return best, found
}
