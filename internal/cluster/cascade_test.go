package cluster_test

import (
	"bytes"
	"context"
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
	"github.com/traverse-rtc/traverse/internal/testkit"
)

type cascadeNode struct {
	s   *sfu.Server
	reg *prometheus.Registry
	id  relay.NodeID
}

func (n *cascadeNode) counter(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := n.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() != labels[i+1] {
						continue metric
					}
				}
			}
			v += m.GetCounter().GetValue()
		}
	}
	return v
}

// TestCascadeThreeNodes is the cascade end to end: three SFU nodes with
// relay ports and a controller with the cascade on, over a real NATS
// server with JetStream. A publisher on node A, subscribers on B and C:
// the controller learns the relay addresses from the announcements, the
// routes from the nodes' link reports, the tracks and members from the
// room events, and pushes peers, routes, needs and remote tracks; B and C
// receive A's media. Then the A-C link is blocked in both endpoints: the
// probes see it down, the controller moves A's route to C through B, and
// C's subscriber keeps receiving, now through B, by the routes alone.
func TestCascadeThreeNodes(t *testing.T) {
	c := clustertest.Start(t, 1)
	ctl, err := controller.New(controller.Config{ID: "ctl-1", Bus: c.Config("ctl-1", bus.RoleController, ""),
		Cascade: true, Registerer: prometheus.NewRegistry(), Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, ctl.Run)
	t.Cleanup(func() { ctl.Close() })
	secret := bytes.Repeat([]byte("s"), 32)
	start := func(name string) *cascadeNode {
		reg := prometheus.NewRegistry()
		s, err := sfu.New(sfu.Config{UDP: netip.MustParseAddrPort("127.0.0.1:0"), NodeID: name,
			Bus: c.Connect(name, bus.RoleNode, name), Log: quiet, Registerer: reg,
			CascadeListen: netip.MustParseAddrPort("127.0.0.1:0"), CascadeSecret: secret})
		if err != nil {
			t.Fatal(err)
		}
		testkit.Run(t, s.Run)
		return &cascadeNode{s: s, reg: reg, id: relay.NodeID(s.CascadeID())}
	}
	a, b, cc := start("nodeA"), start("nodeB"), start("nodeC")
	testkit.WaitFor(t, 10*time.Second, "the controller to lead", func() bool { return ctl.Leading() != 0 })

	sig := c.Connect("sig", bus.RoleSignal, "")
	api, err := loadgen.NewAPI(false, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	dial := func(node string, cfg loadgen.ClientConfig) *loadgen.Client {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cl, err := loadgen.Dial(ctx, api, loadgen.NewBusSignaler(sig, node), cfg)
		if err != nil {
			t.Fatalf("dial %s on %s: %v", cfg.Identity, node, err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	subB := dial("nodeB", loadgen.ClientConfig{Room: "r1", Identity: "sub-b", Subscribe: true})
	subC := dial("nodeC", loadgen.ClientConfig{Room: "r1", Identity: "sub-c", Subscribe: true})
	pub := dial("nodeA", loadgen.ClientConfig{Room: "r1", Identity: "pub", Publish: true, VideoBitrate: 300_000})
	video := func(cl *loadgen.Client) uint64 {
		var n uint64
		for _, tr := range cl.Tracks() {
			if tr.Kind == "video" {
				n += tr.Packets()
			}
		}
		return n
	}
	for name, sub := range map[string]*loadgen.Client{"B": subB, "C": subC} {
		testkit.WaitFor(t, 20*time.Second, "the subscriber on "+name+" receiving A's video and audio", func() bool {
			v, au := sub.Receiving(50)
			return v >= 1 && au >= 1
		})
	}
	if f := b.counter(t, "traverse_relay_forwarded_total"); f > 20 {
		t.Fatalf("B forwarded %v messages while A-C was up: the routes do not take the direct link", f)
	}

	// The A-C link dies.
	a.s.Cascade().Block(cc.id, true)
	cc.s.Cascade().Block(a.id, true)
	blockedAt := time.Now()
	fwd := b.counter(t, "traverse_relay_forwarded_total")
	testkit.WaitFor(t, 15*time.Second, "B forwarding A's media to C", func() bool {
		return b.counter(t, "traverse_relay_forwarded_total") > fwd+100
	})
	moved := time.Since(blockedAt)
	got := video(subC)
	testkit.WaitFor(t, 10*time.Second, "C's subscriber receiving video through B", func() bool {
		return video(subC) > got+100
	})
	if d := a.counter(t, "traverse_relay_dropped_total", "reason", "blocked"); d == 0 {
		t.Fatal("A dropped nothing on the blocked link")
	}
	t.Logf("A-C blocked: B forwarding to C after %v", moved.Round(10*time.Millisecond))

	// The publisher leaves: its tracks leave B's and C's rooms.
	if b.s.RemoteTracks("r1") != 2 || cc.s.RemoteTracks("r1") != 2 {
		t.Fatalf("remote tracks before the publisher left: B %d, C %d", b.s.RemoteTracks("r1"), cc.s.RemoteTracks("r1"))
	}
	pub.Close()
	testkit.WaitFor(t, 10*time.Second, "the publisher's tracks gone from B and C", func() bool {
		return b.s.RemoteTracks("r1") == 0 && cc.s.RemoteTracks("r1") == 0
	})
}
