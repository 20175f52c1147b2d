package signal

import (
	"fmt"
	"net/http"
	"net/netip"
	"sort"
	"strings"
)

// Node is one SFU node as its announcements on the bus describe it.
type Node struct {
	ID string
	// Region is the operator's name for where the node runs ("eu-west").
	Region string
	// Public is the address clients reach the node's media port on; when
	// valid, signaling writes it into the node's host candidates.
	Public netip.Addr
	// Load is the node's own estimate of how busy it is, 0 (idle) to 1
	// (full); nodes at or above 1 take no new sessions.
	Load float64
	// Rooms lists the rooms the node serves now, when it says.
	Rooms []string
	// Cascade is set when the node runs a cascade relay port (it
	// announces one): its rooms may span nodes (docs/cascade.md).
	Cascade bool
	// Group names the node's balanced group: nodes behind one UDP load
	// balancer, any of which serves a session whose first binding request
	// reaches it (docs/cascade.md). Empty: none.
	Group string
}

// RegionRule maps clients whose address is in Prefix to Region.
type RegionRule struct {
	Prefix netip.Prefix
	Region string
}

// ParseRegionRule parses "PREFIX=REGION" ("10.1.0.0/16=eu-west").
func ParseRegionRule(s string) (RegionRule, error) {
	p, r, ok := strings.Cut(s, "=")
	if !ok || r == "" {
		return RegionRule{}, fmt.Errorf("%w: region rule %q: want PREFIX=REGION", ErrConfig, s)
	}
	pfx, err := netip.ParsePrefix(strings.TrimSpace(p))
	if err != nil {
		return RegionRule{}, fmt.Errorf("%w: region rule %q: %w", ErrConfig, s, err)
	}
	return RegionRule{Prefix: pfx.Masked(), Region: strings.TrimSpace(r)}, nil
}

// placer chooses the SFU node for a client (docs/signal.md, "Node choice").
type placer struct {
	rules         []RegionRule // longest prefix first
	defaultRegion string
	near          map[string][]string // client region -> nearest regions, in order
	// cascade: rooms may span cascade nodes (Config.Cascade).
	cascade bool
}

func newPlacer(rules []RegionRule, def string, near map[string][]string) *placer {
	r := append([]RegionRule(nil), rules...)
	sort.SliceStable(r, func(i, j int) bool { return r[i].Prefix.Bits() > r[j].Prefix.Bits() })
	return &placer{rules: r, defaultRegion: def, near: near}
}

// distance ranks a node's region for a client of region: 0 the same (or
// no preference), i for the i-th of the client region's near list, one
// past the list for any other.
func (p *placer) distance(region, node string) int {
	if region == "" || node == region {
		return 0
	}
	list := p.near[region]
	for i, r := range list {
		if r == node {
			return i + 1
		}
	}
	return len(list) + 1
}

// region returns the client's region: the longest matching rule's, else the
// default.
func (p *placer) region(client netip.Addr) string {
	client = client.Unmap()
	for _, r := range p.rules {
		if r.Prefix.Contains(client) {
			return r.Region
		}
	}
	return p.defaultRegion
}

// regionPenalty is added to a node's load per step of region distance
// (placer.distance): loads are below 1 for nodes with capacity, so a
// nearer region always wins and load decides within a region.
const regionPenalty = 1.0

// cascadeRoomBonus is taken off the score of a cascade node that holds
// the room already: with the cascade on, a newcomer joins the room's node
// unless another node is nearer (another region) or less loaded by more
// than this (a quarter of a node's capacity), so a room spans nodes only
// where that pays.
const cascadeRoomBonus = 0.25

// choose returns the node for a client of room. Rules, in order:
//  1. A node already serving the room (told by roomNode, the node this
//     signal placed the room on, or by a node's announced Rooms) keeps it,
//     unless full: participants of one room must meet on one node until
//     cascading relays between nodes.
//     With the cascade on (placer.cascade), a cascade node holding the
//     room only gets cascadeRoomBonus off its score: a newcomer goes to
//     its nearest, least loaded cascade node and the room spans nodes.
//  2. Otherwise the lowest score wins, score = load + regionPenalty times
//     the region distance (the client's region, then its near list in
//     order, then the others); ties go to the lower ID.
//
// Full nodes (load >= 1) are never chosen.
func (p *placer) choose(nodes []Node, room, roomNode string, client netip.Addr) (Node, error) {
	var best Node
	bestScore := 0.0
	found := false
	region := p.region(client)
	for _, n := range nodes {
		if n.Load >= 1 {
			continue
		}
		holds := n.ID == roomNode
		for _, r := range n.Rooms {
			holds = holds || r == room
		}
		if holds && !(p.cascade && n.Cascade) {
			return n, nil
		}
		s := n.Load + regionPenalty*float64(p.distance(region, n.Region))
		if holds {
			s -= cascadeRoomBonus
		}
		if !found || s < bestScore || s == bestScore && n.ID < best.ID {
			best, bestScore, found = n, s, true
		}
	}
	if !found {
		return Node{}, ErrNoNode
	}
	return best, nil
}

// clientIP returns the client's real address: the connection's peer, or,
// when that peer is a trusted proxy, the right-most X-Forwarded-For entry
// that is not itself a trusted proxy (the left-most entries are whatever the
// client chose to send).
func clientIP(r *http.Request, trusted []netip.Prefix) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	peer := ap.Addr().Unmap()
	if !inPrefixes(peer, trusted) {
		return peer
	}
	var hops []string
	for _, h := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(h, ",")...)
	}
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break
		}
		a = a.Unmap()
		if !inPrefixes(a, trusted) {
			return a
		}
		peer = a
	}
	return peer
}

func inPrefixes(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
