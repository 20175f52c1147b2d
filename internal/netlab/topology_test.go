package netlab

import (
	"slices"
	"testing"
)

func TestParseTopology(t *testing.T) {
	for _, tc := range []struct {
		in     string
		kinds  int
		double bool
		err    bool
	}{
		{in: "all", kinds: len(Kinds), double: true},
		{in: "double", double: true},
		{in: "eim-eif", kinds: 1},
		{in: "routed", kinds: 1},
		{in: "cone", err: true},
		{in: "", err: true},
	} {
		got, err := ParseTopology(tc.in)
		if (err != nil) != tc.err || len(got.Kinds) != tc.kinds || got.Double != tc.double {
			t.Errorf("ParseTopology(%q) = %+v, %v", tc.in, got, err)
		}
	}
}

// TestBuildTopology builds what "traverse lab up" builds and checks the
// nodes, their roles and the client to try NAT discovery from.
func TestBuildTopology(t *testing.T) {
	for _, tc := range []struct {
		topo   string
		nodes  []string
		client string
	}{
		// A lone router translates nothing: its client is the hint anyway.
		{topo: "routed", nodes: []string{"inet", "stun", "routed", "crouted"}, client: "crouted"},
		{topo: "block-udp", nodes: []string{"inet", "stun", "blockudp", "cblockudp"}, client: "cblockudp"},
		{topo: "double", nodes: []string{"inet", "stun", "cgn", "home", "cdouble"}, client: "cdouble"},
	} {
		t.Run(tc.topo, func(t *testing.T) {
			lab := New(t)
			topo, err := ParseTopology(tc.topo)
			if err != nil {
				t.Fatal(err)
			}
			b, err := topo.Build(lab, Hairpin())
			if err != nil {
				t.Fatal(err)
			}
			var nodes []string
			for _, r := range b.Roles {
				nodes = append(nodes, r.Node)
				if r.Role == "" {
					t.Errorf("node %s has no role", r.Node)
				}
			}
			if !slices.Equal(nodes, tc.nodes) {
				t.Errorf("nodes %v, want %v", nodes, tc.nodes)
			}
			if want := "tl-" + lab.Name() + "-" + tc.client; b.Client != want {
				t.Errorf("client %q, want %q", b.Client, want)
			}
			if n := len(b.STUN.Addrs()); n != 2 {
				t.Errorf("stun host has %d addresses, want 2", n)
			}
		})
	}
}
