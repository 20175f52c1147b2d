package cluster_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/logging"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cascade/relay"
	"github.com/traverse-rtc/traverse/internal/cluster/clustertest"
	"github.com/traverse-rtc/traverse/internal/controller"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/netlab"
	"github.com/traverse-rtc/traverse/internal/sfu"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

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
	lab := netlab.New(t)
	lb := lab.NAT("lb", lab.Internet(), netlab.Routed)
	hosts := []*netlab.Host{lab.Host("n1", lb), lab.Host("n2", lb), lab.Host("n3", lb)}
	clientHosts := []*netlab.Host{lab.Host("c1", lab.Internet(), netlab.Addrs(2)), lab.Host("c2", lab.Internet(), netlab.Addrs(2))}
	if err := lab.Err(); err != nil {
		t.Fatal(err)
	}
	const port, seed = 7882, 0x5eed
	vip := lb.Addr()
	var backends []netip.Addr
	for _, h := range hosts {
		backends = append(backends, h.Addr())
	}
	if err := lb.BalanceUDP(port, backends, seed); err != nil {
		t.Fatal(err)
	}

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
	for i, h := range hosts {
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

	be, err := signal.NewBusBackend(c.Connect("sig", bus.RoleSignal, ""), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Close() })
	testkit.WaitFor(t, 10*time.Second, "signal to see the group's three nodes", func() bool {
		n := 0
		for _, nd := range be.Nodes() {
			if nd.Group == "g1" && nd.Public == vip {
				n++
			}
		}
		return n == 3
	})
	srv, err := signal.New(signal.Config{Key: []byte("balanced-group-lab-key"), Backend: be, DemoTokens: true, Cascade: true})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { hs.Close(); _ = srv.Close() })
	wsURL := "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws"

	// Four clients, one per source address; each address's port is the
	// first from 40000 that the balancer's hash sends to the wanted node.
	want := []int{0, 1, 2, 0}
	var srcs []netip.AddrPort
	for _, h := range clientHosts {
		for _, a := range h.Addrs() {
			srcs = append(srcs, netip.AddrPortFrom(a, 0))
		}
	}
	hostOf := func(i int) *netlab.Host { return clientHosts[i/2] }
	expect := make([]int, len(nodes))
	quietLog := logging.NewDefaultLoggerFactory()
	quietLog.DefaultLogLevel = logging.LogLevelDisabled
	var clients []*loadgen.Client
	for i, w := range want {
		src := srcs[i]
		for p := uint16(40000); ; p++ {
			if netlab.Backend(netip.AddrPortFrom(src.Addr(), p), len(nodes), seed) == w {
				src = netip.AddrPortFrom(src.Addr(), p)
				break
			}
		}
		expect[w]++
		conn, err := hostOf(i).ListenUDP(src)
		if err != nil {
			t.Fatal(err)
		}
		mux := ice.NewUDPMuxDefault(ice.UDPMuxParams{UDPConn: conn, Logger: quietLog.NewLogger("mux")})
		t.Cleanup(func() { _ = mux.Close() })
		api, err := loadgen.NewAPI(false, src.Addr(), loadgen.WithUDPMux(mux))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cl, err := loadgen.Dial(ctx, api, loadgen.NewWSSignaler(wsURL, loadgen.DemoTokens(wsURL)),
			loadgen.ClientConfig{Room: "lobby", Identity: fmt.Sprintf("c%d", i), Publish: true, Subscribe: true, VideoBitrate: 120_000})
		cancel()
		if err != nil {
			t.Fatalf("client %d (%v): %v", i, src, err)
		}
		t.Cleanup(func() { cl.Close() })
		clients = append(clients, cl)
	}
	for i, cl := range clients {
		select {
		case <-cl.Connected():
		case <-time.After(30 * time.Second):
			t.Fatalf("client %d never connected", i)
		}
	}
	testkit.WaitFor(t, 10*time.Second, "each node serving the clients the balancer sends it", func() bool {
		for i, n := range nodes {
			if n.s.Sessions() != expect[i] {
				return false
			}
		}
		return true
	})
	for i, n := range nodes {
		if expect[i] == 0 {
			t.Fatalf("node %d serves no client: the test's ports do not spread", i)
		}
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
			t.Logf("node %d: remote tracks %d, relay sent %v received %v, unknown %v", i, n.s.RemoteTracks("lobby"),
				n.counter(t, "traverse_relay_sent_total"), n.counter(t, "traverse_relay_delivered_total"),
				n.counter(t, "traverse_sfu_cascade_unknown_total"))
		}
	})
	for i, cl := range clients {
		testkit.WaitFor(t, 40*time.Second, fmt.Sprintf("client %d receiving the three others' video and audio", i), func() bool {
			var v, a int
			for _, tr := range cl.Tracks() {
				if tr.Packets() >= 30 {
					if tr.Kind == "video" {
						v++
					} else {
						a++
					}
				}
			}
			return v >= len(clients)-1 && a >= len(clients)-1
		})
	}
	if be.RefusedClaims() != 0 {
		t.Errorf("signal refused %d claims; every client has one address", be.RefusedClaims())
	}
	for i, n := range nodes {
		t.Logf("node %d: sessions %d, claims sent %v, bindings dropped while claiming %v", i, n.s.Sessions(),
			n.counter(t, "traverse_sfu_group_claims_total", "result", "sent"),
			n.counter(t, "traverse_sfu_group_stun_dropped_total", "reason", "claiming"))
	}
}
