package relaychoice

import (
	"slices"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/client/nat"
)

const (
	eim  = nat.EndpointIndependent
	adm  = nat.AddressDependent
	apdm = nat.AddressAndPortDependent
)

var (
	open     = NAT{Mapping: eim, Filtering: eim}
	eimEIF   = NAT{Behind: true, Mapping: eim, Filtering: eim}
	eimADF   = NAT{Behind: true, Mapping: eim, Filtering: adm}
	eimAPDF  = NAT{Behind: true, Mapping: eim, Filtering: apdm}
	sym      = NAT{Behind: true, Mapping: apdm, Filtering: apdm}
	admAPDF  = NAT{Behind: true, Mapping: adm, Filtering: apdm}
	blocked  = NAT{Behind: true, UDPBlocked: true}
	unknownF = NAT{Behind: true, Mapping: eim}
)

func TestReachable(t *testing.T) {
	peers := []struct {
		name string
		n    NAT
	}{{"open", open}, {"eim-eif", eimEIF}, {"eim-adf", eimADF}, {"eim-apdf", eimAPDF}, {"sym", sym}, {"adm-apdf", admAPDF}, {"blocked", blocked}}
	// want[node][peer], peers in the order above.
	for _, tc := range []struct {
		node string
		n    NAT
		want [7]bool
	}{
		{"open", open, [7]bool{true, true, true, true, true, true, false}},
		{"eim-eif", eimEIF, [7]bool{true, true, true, true, true, true, false}},
		{"eim-adf", eimADF, [7]bool{true, true, true, true, true, true, false}},
		{"eim-apdf", eimAPDF, [7]bool{true, true, true, true, false, false, false}},
		{"sym", sym, [7]bool{}},
		{"adm-apdf", admAPDF, [7]bool{}},
		{"blocked", blocked, [7]bool{}},
		{"unknown filtering", unknownF, [7]bool{}},
		{"firewall apdf, no nat", NAT{Mapping: eim, Filtering: apdm}, [7]bool{true, true, true, true, false, false, false}},
	} {
		for i, p := range peers {
			if got := Reachable(tc.n, p.n); got != tc.want[i] {
				t.Errorf("node %s, peer %s: reachable %v, want %v", tc.node, p.name, got, tc.want[i])
			}
		}
	}
}

func ids(ns []Node) []string {
	var s []string
	for _, n := range ns {
		s = append(s, n.ID)
	}
	return s
}

func TestChoose(t *testing.T) {
	now := time.Unix(1000, 0)
	node := func(id, region string, n NAT) Node {
		return Node{ID: id, Region: region, NAT: n, Seen: now, MaxSessions: 10}
	}
	for _, tc := range []struct {
		name  string
		nodes []Node
		a, b  Peer
		limit int
		want  []string
	}{
		{
			name:  "incompatible skipped: an apdf node for a symmetric peer, a symmetric node for anyone",
			nodes: []Node{node("apdf", "eu", eimAPDF), node("symnode", "eu", sym), node("far-eif", "us", eimEIF)},
			a:     Peer{NAT: sym, Region: "eu"}, b: Peer{NAT: eimEIF, Region: "eu"},
			want: []string{"far-eif"},
		},
		{
			name:  "nearest compatible wins: region first",
			nodes: []Node{node("us1", "us", open), node("eu1", "eu", eimADF), node("asia", "asia", open)},
			a:     Peer{NAT: eimAPDF, Region: "eu"}, b: Peer{NAT: eimAPDF, Region: "us"},
			want: []string{"eu1", "us1", "asia"},
		},
		{
			name:  "both peers' region beats one",
			nodes: []Node{node("a", "us", open), node("b", "eu", open)},
			a:     Peer{NAT: sym, Region: "eu"}, b: Peer{NAT: sym, Region: "eu"},
			want: []string{"b", "a"},
		},
		{
			name:  "then measured RTT, measured before unmeasured",
			nodes: []Node{node("n1", "eu", open), node("n2", "eu", open), node("n3", "eu", open)},
			a:     Peer{NAT: sym, Region: "eu", RTT: map[string]time.Duration{"n1": 30 * time.Millisecond, "n2": 10 * time.Millisecond}},
			b:     Peer{NAT: sym, Region: "eu", RTT: map[string]time.Duration{"n1": 5 * time.Millisecond, "n2": 40 * time.Millisecond, "n3": time.Millisecond}},
			want:  []string{"n1", "n2", "n3"},
		},
		{
			name: "full and silent nodes not offered",
			nodes: []Node{
				{ID: "full", NAT: open, Seen: now, Sessions: 4, MaxSessions: 4},
				{ID: "fullbw", NAT: open, Seen: now, Bitrate: 2e6, MaxBitrate: 2e6},
				{ID: "silent", NAT: open, Seen: now.Add(-DefaultSilence - time.Millisecond)},
				{ID: "ok", NAT: open, Seen: now.Add(-DefaultSilence)},
			},
			a: Peer{NAT: sym}, b: Peer{NAT: sym},
			want: []string{"ok"},
		},
		{
			name:  "load breaks ties, then id; limit",
			nodes: []Node{{ID: "z", NAT: open, Seen: now, MaxSessions: 10, Sessions: 1}, {ID: "y", NAT: open, Seen: now, MaxSessions: 10, Sessions: 5}, {ID: "x", NAT: open, Seen: now, MaxSessions: 10, Sessions: 1}},
			a:     Peer{NAT: open}, b: Peer{NAT: open}, limit: 2,
			want: []string{"x", "z"},
		},
		{
			name:  "a UDP-blocked peer gets none",
			nodes: []Node{node("n", "", open)},
			a:     Peer{NAT: blocked}, b: Peer{NAT: open},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ids(Choose(tc.nodes, tc.a, tc.b, now, 0, tc.limit))
			if !slices.Equal(got, tc.want) {
				t.Errorf("offered %v, want %v", got, tc.want)
			}
		})
	}
}
