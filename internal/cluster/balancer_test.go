package cluster_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cascade/relay"
	"github.com/traverse-rtc/traverse/internal/cluster/clustertest"
	"github.com/traverse-rtc/traverse/internal/controller"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/sfu"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// groupLab is the balanced group lab with in-process nodes.
type groupLab struct {
	*clustertest.BalancedLab
	nodes []*cascadeNode
	be    *signal.BusBackend
	wsURL string
}

// startGroupLab builds the lab of three group nodes (in-process, their
// sockets in their namespaces) behind the balancer, a controller with the
// cascade and signal.
func startGroupLab(t *testing.T) *groupLab {
	t.Helper()
	const port = 7882
	lab := clustertest.NewBalancedLab(t, 3, 2, port)
	vip := lab.Public()
	c := clustertest.Start(t, 1)
	ctl, err := controller.New(controller.Config{ID: "ctl-1", Bus: c.Config("ctl-1", bus.RoleController, ""),
		Cascade: true, Registerer: prometheus.NewRegistry(), Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, ctl.Run)
	t.Cleanup(func() { ctl.Close() })
	secret := bytes.Repeat([]byte("g"), 32)
	var nodes []*cascadeNode
	for i, h := range lab.Nodes {
		name := fmt.Sprintf("n%d", i+1)
		reg := prometheus.NewRegistry()
		cfg := sfu.Config{UDP: netip.AddrPortFrom(h.Addr(), port), PublicIP: vip, NodeID: name, Group: "g1",
			Bus: c.Connect(name, bus.RoleNode, name), Log: quiet, Registerer: reg,
			CascadeListen: netip.AddrPortFrom(h.Addr(), 7890), CascadeSecret: secret}
		var s *sfu.Server
		// The node's sockets (media, relay) open in its namespace.
		if err := h.Do(func() error { s, err = sfu.New(cfg); return err }); err != nil {
			t.Fatal(err)
		}
		testkit.Run(t, s.Run)
		nodes = append(nodes, &cascadeNode{s: s, reg: reg, id: relay.NodeID(s.CascadeID())})
	}
	testkit.WaitFor(t, 10*time.Second, "the controller to lead", func() bool { return ctl.Leading() != 0 })

	be, wsURL := lab.Signal(t, c.Connect("sig", bus.RoleSignal, ""), "g1")
	return &groupLab{BalancedLab: lab, nodes: nodes, be: be, wsURL: wsURL}
}

// TestBalancedGroupLab is seed E part 2 in a lab: three SFU nodes of one
// balanced group, each in its own network namespace behind a Linux L4
// balancer (nftables jhash DNAT of the client's source address and port,
// in the balancer's namespace), all announcing the balancer's one public
// address. Four clients in two other namespaces, from four source
// addresses, signal through signal (which offers each session to the
// whole group) and send their media to the public address; the balancer
// spreads them over the three nodes (their ports are chosen so that the
// kernel's hash, computed by netlab.Backend, gives each node at least
// one). Each node serves exactly the clients the hash sends it (it claims
// the session on the first binding request), all four are in one room,
// and every client receives every other client's video and audio: the
// room spans the nodes through the cascade.
func TestBalancedGroupLab(t *testing.T) {
	g := startGroupLab(t)
	nodes, be := g.nodes, g.be
	want := []int{0, 1, 2, 0}
	expect := clustertest.Expect(want, len(nodes))
	clients := g.DialSpread(t, want, "lobby", g.wsURL, loadgen.DemoTokens(g.wsURL))
	testkit.WaitFor(t, 10*time.Second, "each node serving the clients the balancer sends it", func() bool {
		for i, n := range nodes {
			if n.s.Sessions() != expect[i] {
				return false
			}
		}
		return true
	})
	for i, n := range nodes {
		if won := n.counter(t, "traverse_sfu_group_claims_total", "result", "won"); int(won) != expect[i] {
			t.Errorf("node %d won %v claims, want %d", i, won, expect[i])
		}
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for i, cl := range clients {
			for _, tr := range cl.Tracks() {
				t.Logf("client %d: %s track: %d packets", i, tr.Kind, tr.Packets())
			}
		}
		for i, n := range nodes {
			t.Logf("node %d: remote tracks %d, relay sent %v delivered %v, unknown %v", i, n.s.RemoteTracks("lobby"),
				n.counter(t, "traverse_relay_sent_total"), n.counter(t, "traverse_relay_delivered_total"),
				n.counter(t, "traverse_sfu_cascade_unknown_total"))
		}
	})
	clustertest.WaitEveryoneReceives(t, clients)
	if be.RefusedClaims() != 0 {
		t.Errorf("signal refused %d claims; every client has one address", be.RefusedClaims())
	}
	for i, n := range nodes {
		t.Logf("node %d: sessions %d, claims sent %v, bindings dropped while claiming %v", i, n.s.Sessions(),
			n.counter(t, "traverse_sfu_group_claims_total", "result", "sent"),
			n.counter(t, "traverse_sfu_group_stun_dropped_total", "reason", "claiming"))
	}
}

// TestBalancedGroupTwoAddresses: a client with two host candidates whose
// flows the balancer sends to two different nodes. Both nodes see its
// binding requests and claim the session; signal gives it to the first
// and refuses the other, which drops its pending session (counted lost)
// and then the client's bindings as unknown. The client connects through
// the winner and it and a client on the third node receive each other.
func TestBalancedGroupTwoAddresses(t *testing.T) {
	g := startGroupLab(t)
	c1, c2 := g.Clients[0], g.Clients[1]
	tok := loadgen.DemoTokens(g.wsURL)
	multi := g.Dial(t, c1, []netip.AddrPort{g.PortTo(c1.Addrs()[0], 0), g.PortTo(c1.Addrs()[1], 1)}, "multi", "lobby", g.wsURL, tok)
	other := g.Dial(t, c2, []netip.AddrPort{g.PortTo(c2.Addr(), 2)}, "other", "lobby", g.wsURL, tok)
	clustertest.WaitConnected(t, multi, other)
	testkit.WaitFor(t, 10*time.Second, "one of nodes 0 and 1 serving the two-address client", func() bool {
		return g.nodes[0].s.Sessions()+g.nodes[1].s.Sessions() == 1 && g.nodes[2].s.Sessions() == 1
	})
	clustertest.WaitEveryoneReceives(t, []*loadgen.Client{multi, other})
	if n := g.be.RefusedClaims(); n != 1 {
		t.Fatalf("signal refused %d claims, want the loser's 1", n)
	}
	loser := g.nodes[0]
	if g.nodes[0].s.Sessions() == 1 {
		loser = g.nodes[1]
	}
	if lost := loser.counter(t, "traverse_sfu_group_claims_total", "result", "lost"); lost != 1 {
		t.Fatalf("the losing node counted %v lost claims, want 1", lost)
	}
	testkit.WaitFor(t, 10*time.Second, "the loser dropping the client's later bindings as unknown", func() bool {
		return loser.counter(t, "traverse_sfu_group_stun_dropped_total", "reason", "unknown") > 0
	})
}
