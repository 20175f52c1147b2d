// Package relaychoice decides which relay nodes two peers are offered
// (the path sequence's second step): the nodes whose NAT situation lets BOTH peers reach
// them, nearest first. It is pure: no I/O, no clock of its own.
//
// # The compatibility rule (RFC 4787 behaviours)
//
// A peer reaches a node when the peer's first packet (a bind) gets through
// the node's NAT to the node's registered public address, and the node's
// answers get back through the peer's NAT:
//
//   - A UDP-blocked peer or node reaches nothing over UDP.
//   - The node's mapping must be endpoint-independent (or no NAT): its
//     registered public address is the mapping its STUN server saw; with
//     address- or address-and-port-dependent mapping that mapping exists
//     for the STUN server alone and a peer's packets to it are dropped.
//   - The node's filtering decides who may send first:
//     endpoint-independent: anyone, whatever the peer's NAT;
//     address-dependent: only an IP the node has sent to, so signaling hands
//     the node both peers' public addresses and the node punches (0xEC) to
//     each before they bind; a peer keeps its public IP whatever its mapping,
//     so every peer that is not UDP-blocked is reachable;
//     address-and-port-dependent: only the exact IP:port punched to, so the
//     peer's port toward the node must be the one its STUN server saw: the
//     peer's mapping must be endpoint-independent (or no NAT); a symmetric
//     peer cannot reach such a node;
//     unknown: not offered (the test could not tell).
//   - The peer's own filtering never matters: the peer sends first, which
//     opens its filter for the node's one address:port, and the node
//     answers from that port.
//
// # The order
//
// Full nodes (sessions at their cap, or bitrate at its cap) and silent
// ones (no report within Silence) are never offered. The rest are ordered
// by how many of the two peers share the node's region (2, 1, 0), then by
// the sum of the peers' measured RTTs to the node (nodes with both RTTs
// measured before those without), then by load, then by id.
package relaychoice

import (
	"net/netip"
	"sort"
	"time"

	"github.com/traverse-rtc/traverse/client/nat"
)

// DefaultSilence is how long a node may go without a report before it is
// no longer offered.
const DefaultSilence = 5 * time.Second

// NAT is what a peer or a node knows of its own NAT (client/nat's Report).
type NAT struct {
	// Behind is true when a NAT translates (nat.Report.NAT).
	Behind     bool
	UDPBlocked bool
	Mapping    nat.Behavior
	Filtering  nat.Behavior
}

// FromReport takes the fields of a client/nat report.
func FromReport(r nat.Report) NAT {
	return NAT{Behind: r.NAT, UDPBlocked: r.UDPBlocked, Mapping: r.Mapping, Filtering: r.Filtering}
}

// Node is one registered relay node as its last report tells it.
type Node struct {
	ID     string
	Region string
	Addr   netip.AddrPort
	NAT    NAT
	// Sessions and MaxSessions (0: no cap); Bitrate and MaxBitrate in
	// bits per second (0: no cap).
	Sessions, MaxSessions int
	Bitrate, MaxBitrate   int64
	// Seen is when its last report arrived.
	Seen time.Time
}

// Peer is one side of the pair asking.
type Peer struct {
	NAT    NAT
	Region string
	// RTT holds the peer's measured round-trip times to nodes, by id.
	RTT map[string]time.Duration
}

// Reachable reports whether a peer with NAT p can reach a node with NAT n
// (the rule in the package doc).
func Reachable(n, p NAT) bool {
	if p.UDPBlocked || n.UDPBlocked {
		return false
	}
	if n.Behind && n.Mapping != nat.EndpointIndependent {
		return false
	}
	switch n.Filtering {
	case nat.EndpointIndependent, nat.AddressDependent:
		return true
	case nat.AddressAndPortDependent:
		return !p.Behind || p.Mapping == nat.EndpointIndependent
	}
	return false
}

// Compatible reports whether both peers reach n.
func Compatible(n NAT, a, b Peer) bool { return Reachable(n, a.NAT) && Reachable(n, b.NAT) }

// Full reports whether n is at a cap.
func (n *Node) Full() bool {
	return (n.MaxSessions > 0 && n.Sessions >= n.MaxSessions) || (n.MaxBitrate > 0 && n.Bitrate >= n.MaxBitrate)
}

func (n *Node) load() float64 {
	l := 0.0
	if n.MaxSessions > 0 {
		l = float64(n.Sessions) / float64(n.MaxSessions)
	}
	if n.MaxBitrate > 0 {
		l = max(l, float64(n.Bitrate)/float64(n.MaxBitrate))
	}
	return l
}

// Choose returns the nodes to offer a and b, best first, at most limit of
// them (0: all): compatible with both, neither full nor silent for more
// than silence (DefaultSilence when 0) at now.
func Choose(nodes []Node, a, b Peer, now time.Time, silence time.Duration, limit int) []Node {
	if silence <= 0 {
		silence = DefaultSilence
	}
	type cand struct {
		n       Node
		region  int
		rtt     time.Duration
		haveRTT bool
	}
	var cs []cand
	for _, n := range nodes {
		if now.Sub(n.Seen) > silence || n.Full() || !Compatible(n.NAT, a, b) {
			continue
		}
		c := cand{n: n}
		for _, p := range [2]Peer{a, b} {
			if p.Region != "" && p.Region == n.Region {
				c.region++
			}
		}
		ra, oka := a.RTT[n.ID]
		rb, okb := b.RTT[n.ID]
		c.haveRTT, c.rtt = oka && okb, ra+rb
		cs = append(cs, c)
	}
	sort.SliceStable(cs, func(i, j int) bool {
		x, y := cs[i], cs[j]
		switch {
		case x.region != y.region:
			return x.region > y.region
		case x.haveRTT != y.haveRTT:
			return x.haveRTT
		case x.haveRTT && x.rtt != y.rtt:
			return x.rtt < y.rtt
		case x.n.load() != y.n.load():
			return x.n.load() < y.n.load()
		}
		return x.n.ID < y.n.ID
	})
	if limit > 0 && len(cs) > limit {
		cs = cs[:limit]
	}
	out := make([]Node, len(cs))
	for i, c := range cs {
		out[i] = c.n
	}
	return out
}
