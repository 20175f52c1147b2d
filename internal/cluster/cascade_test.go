package cluster_test

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cascade/relay"
	"github.com/traverse-rtc/traverse/internal/cluster/clustertest"
	"github.com/traverse-rtc/traverse/internal/controller"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/loadgen/loadgentest"
	"github.com/traverse-rtc/traverse/internal/metricstest"
	"github.com/traverse-rtc/traverse/internal/sfu"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

type cascadeNode struct {
	s   *sfu.Server
	reg *prometheus.Registry
	id  relay.NodeID
}

// counter is the node's metric name summed over the series with labels (0
// when it has none yet).
func (n *cascadeNode) counter(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	return max(0, metricstest.Value(t, n.reg, name, labels...))
}

// startCascadeController runs a controller with the cascade on c and
// returns its metrics.
func startCascadeController(t *testing.T, c *clustertest.Cluster, rotation time.Duration) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	ctl, err := controller.New(controller.Config{ID: "ctl-1", Bus: c.Config("ctl-1", bus.RoleController, ""),
		Cascade: true, CascadeKeyRotation: rotation, Registerer: reg, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, ctl.Run)
	t.Cleanup(func() { ctl.Close() })
	testkit.WaitFor(t, 10*time.Second, "the controller to lead", func() bool { return ctl.Leading() != 0 })
	return reg
}

var cascadeSecret = bytes.Repeat([]byte("s"), 32)

// startCascadeSFU runs an SFU node with a relay port on c; mods change
// its Config.
func startCascadeSFU(t *testing.T, c *clustertest.Cluster, name string, mods ...func(*sfu.Config)) *cascadeNode {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := sfu.Config{UDP: netip.MustParseAddrPort("127.0.0.1:0"), NodeID: name,
		Bus: c.Connect(name, bus.RoleNode, name), Log: quiet, Registerer: reg,
		CascadeListen: netip.MustParseAddrPort("127.0.0.1:0"), CascadeSecret: cascadeSecret}
	for _, m := range mods {
		m(&cfg)
	}
	s, err := sfu.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, s.Run)
	return &cascadeNode{s: s, reg: reg, id: relay.NodeID(s.CascadeID())}
}

// cascadeDialer returns a function that joins a pion client on a node.
func cascadeDialer(t *testing.T, c *clustertest.Cluster) func(node string, cfg loadgen.ClientConfig) *loadgen.Client {
	return loadgentest.BusDialer(t, c.Connect("sig", bus.RoleSignal, ""))
}

// waitMedia waits for each subscriber (by its node's name) to receive
// video and audio.
func waitMedia(t *testing.T, subs map[string]*loadgen.Client) {
	t.Helper()
	for name, sub := range subs {
		testkit.WaitFor(t, 20*time.Second, "the subscriber on "+name+" receiving video and audio", func() bool {
			return sub.Receives(1, 1, 50)
		})
	}
}

// TestCascadeThreeNodes is the cascade end to end: three SFU nodes with
// relay ports and a controller with the cascade on, over a real NATS
// server with JetStream. A publisher on node A, subscribers on B and C:
// the controller learns the relay addresses from the announcements, the
// routes from the nodes' link reports, the tracks and members from the
// room events, and pushes peers, routes, needs and remote tracks; B and C
// receive A's media, each packet once (A sends to both, or to one of
// them that holds the track for the other, by the nearest-holder tree).
// Then the A-C link is blocked in both endpoints: the probes see it down, the controller moves A's route to C through B (and
// B becomes the nearest holder for C), and C's subscriber keeps
// receiving, now through B. All along the controller steps the key epoch
// every 2 s, and no frame is refused for its epoch.
func TestCascadeThreeNodes(t *testing.T) {
	c := clustertest.Start(t, 1)
	ctlReg := startCascadeController(t, c, 2*time.Second)
	a, b, cc := startCascadeSFU(t, c, "nodeA"), startCascadeSFU(t, c, "nodeB"), startCascadeSFU(t, c, "nodeC")
	dial := cascadeDialer(t, c)
	subB := dial("nodeB", loadgen.ClientConfig{Room: "r1", Identity: "sub-b", Subscribe: true})
	subC := dial("nodeC", loadgen.ClientConfig{Room: "r1", Identity: "sub-c", Subscribe: true})
	pub := dial("nodeA", loadgen.ClientConfig{Room: "r1", Identity: "pub", Publish: true, VideoBitrate: 300_000})
	waitMedia(t, map[string]*loadgen.Client{"B": subB, "C": subC})
	video := func(cl *loadgen.Client) uint64 {
		var n uint64
		for _, tr := range cl.Tracks() {
			if tr.Kind == "video" {
				n += tr.Packets()
			}
		}
		return n
	}
	// Each of B and C receives each packet once, over one link, whichever
	// node holds the track for C (A, or B when B-C measured nearer):
	// over a window, what crosses the links into B equals what crosses
	// the links into C.
	inbound := func() (toB, toC uint64) {
		ab, ac, bc, cb := a.s.Cascade().DataSent()[b.id], a.s.Cascade().DataSent()[cc.id],
			b.s.Cascade().DataSent()[cc.id], cc.s.Cascade().DataSent()[b.id]
		return ab + cb, ac + bc
	}
	b0, c0 := inbound()
	testkit.WaitFor(t, 10*time.Second, "500 more packets into B", func() bool { x, _ := inbound(); return x > b0+500 })
	b1, c1 := inbound()
	if db, dc := float64(b1-b0), float64(c1-c0); dc < 0.9*db || dc > 1.1*db {
		t.Fatalf("over one window %v data messages crossed into B and %v into C: a packet crossed twice or not at all", db, dc)
	}
	t.Logf("A-C up: A -> B %d, A -> C %d, B -> C %d, C -> B %d data messages", a.s.Cascade().DataSent()[b.id],
		a.s.Cascade().DataSent()[cc.id], b.s.Cascade().DataSent()[cc.id], cc.s.Cascade().DataSent()[b.id])

	// The A-C link dies.
	a.s.Cascade().Block(cc.id, true)
	cc.s.Cascade().Block(a.id, true)
	blockedAt := time.Now()
	fwd := b.s.Cascade().DataSent()[cc.id]
	testkit.WaitFor(t, 15*time.Second, "B sending A's media to C", func() bool {
		return b.s.Cascade().DataSent()[cc.id] > fwd+100
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

	// The key epoch was stepped every 2 s all along, the nodes switching
	// in any order: no frame was refused for its epoch.
	rot := &cascadeNode{reg: ctlReg}
	if r := rot.counter(t, "traverse_controller_cascade_key_rotations_total"); r < 3 {
		t.Fatalf("%v key rotations", r)
	}
	for _, n := range []*cascadeNode{a, b, cc} {
		if d := n.counter(t, "traverse_relay_dropped_total", "reason", "epoch"); d != 0 {
			t.Fatalf("node %d refused %v frames for their epoch across the rotations", n.id, d)
		}
	}

	// The publisher leaves: its tracks leave B's and C's rooms.
	if b.s.RemoteTracks("r1") != 2 || cc.s.RemoteTracks("r1") != 2 {
		t.Fatalf("remote tracks before the publisher left: B %d, C %d", b.s.RemoteTracks("r1"), cc.s.RemoteTracks("r1"))
	}
	pub.Close()
	testkit.WaitFor(t, 10*time.Second, "the publisher's tracks gone from B and C", func() bool {
		return b.s.RemoteTracks("r1") == 0 && cc.s.RemoteTracks("r1") == 0
	})
}

// TestCascadeFourNodesHolder: four SFU nodes where only the links A-B,
// B-C and B-D work (A-C, A-D and C-D blocked in both endpoints from the
// start), a publisher on A, subscribers on C and D, nobody on B. The
// controller's tree makes B, which has no participant, the holder that
// forwards A's track to C and D: A sends each packet once (to B), B once
// to each of C and D, B's SFU is handed nothing, and the subscribers
// receive.
func TestCascadeFourNodesHolder(t *testing.T) {
	c := clustertest.Start(t, 1)
	startCascadeController(t, c, 0)
	a, b, cc, d := startCascadeSFU(t, c, "nodeA"), startCascadeSFU(t, c, "nodeB"), startCascadeSFU(t, c, "nodeC"),
		startCascadeSFU(t, c, "nodeD")
	for _, l := range [][2]*cascadeNode{{a, cc}, {a, d}, {cc, d}} {
		l[0].s.Cascade().Block(l[1].id, true)
		l[1].s.Cascade().Block(l[0].id, true)
	}
	dial := cascadeDialer(t, c)
	subC := dial("nodeC", loadgen.ClientConfig{Room: "r1", Identity: "sub-c", Subscribe: true})
	subD := dial("nodeD", loadgen.ClientConfig{Room: "r1", Identity: "sub-d", Subscribe: true})
	dial("nodeA", loadgen.ClientConfig{Room: "r1", Identity: "pub", Publish: true, VideoBitrate: 300_000})
	waitMedia(t, map[string]*loadgen.Client{"C": subC, "D": subD})

	sent := func() (ab, bc, bd, other uint64) {
		for _, n := range []*cascadeNode{a, b, cc, d} {
			for peer, v := range n.s.Cascade().DataSent() {
				switch {
				case n == a && peer == b.id:
					ab = v
				case n == b && peer == cc.id:
					bc = v
				case n == b && peer == d.id:
					bd = v
				case n == b && peer == a.id, n == cc && peer == b.id, n == d && peer == b.id:
					// feedback towards A
				default:
					other += v
				}
			}
		}
		return
	}
	ab0, bc0, bd0, other0 := sent()
	testkit.WaitFor(t, 10*time.Second, "500 more packets from A to B", func() bool { x, _, _, _ := sent(); return x > ab0+500 })
	ab1, bc1, bd1, other1 := sent()
	dab, dbc, dbd := float64(ab1-ab0), float64(bc1-bc0), float64(bd1-bd0)
	t.Logf("over one window: A -> B %v, B -> C %v, B -> D %v data messages", dab, dbc, dbd)
	for name, v := range map[string]float64{"B -> C": dbc, "B -> D": dbd} {
		if v < 0.9*dab || v > 1.1*dab {
			t.Errorf("%s carried %v data messages while A -> B carried %v: not once per link", name, v, dab)
		}
	}
	if other1 != other0 {
		t.Errorf("%d data messages crossed links the tree does not use", other1-other0)
	}
	if got := b.counter(t, "traverse_relay_delivered_total"); got != 0 {
		t.Errorf("B, without participants, handed its SFU %v messages", got)
	}
	if got := b.counter(t, "traverse_sfu_cascade_unknown_total"); got != 0 {
		t.Errorf("B counted %v packets of unknown tracks", got)
	}
}

// TestCascadeBothParentsNoDuplicates: three SFU nodes and the controller
// as in TestCascadeThreeNodes, a publisher on A, subscribers on B and C.
// Once media flows, B and C each get two parents for A's tracks, as a
// tree change applied in between gives them: A sends to both itself, and
// each forwards what A sends it to the other (a holder's command not yet
// withdrawn). Each drops the second copies (its duplicate counter moves)
// and its SFU is handed each packet once: over a window B and C each
// deliver as many messages as A sent packets, where without the windows
// they deliver at least twice as many.
func TestCascadeBothParentsNoDuplicates(t *testing.T) {
	c := clustertest.Start(t, 1)
	startCascadeController(t, c, 0)
	a, b, cc := startCascadeSFU(t, c, "nodeA"), startCascadeSFU(t, c, "nodeB"), startCascadeSFU(t, c, "nodeC")
	// A's tracks, from the controller's commands to A (read on a second
	// connection of A's own credential)
	needs := make(chan []bus.CascadeNeed, 16)
	sub, err := c.Connect("nodeA", bus.RoleNode, "nodeA").SubscribeCascadeCommands("nodeA", func(cmd bus.CascadeCommand) {
		select {
		case needs <- cmd.Needs:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Unsubscribe)
	dial := cascadeDialer(t, c)
	subB := dial("nodeB", loadgen.ClientConfig{Room: "r1", Identity: "sub-b", Subscribe: true})
	subC := dial("nodeC", loadgen.ClientConfig{Room: "r1", Identity: "sub-c", Subscribe: true})
	pub := dial("nodeA", loadgen.ClientConfig{Room: "r1", Identity: "pub", Publish: true, VideoBitrate: 300_000})
	waitMedia(t, map[string]*loadgen.Client{"B": subB, "C": subC})
	var keys []relay.StreamKey
	testkit.WaitFor(t, 10*time.Second, "a command giving A's two tracks", func() bool {
		select {
		case ns := <-needs:
			keys = keys[:0]
			for _, n := range ns {
				if !n.Relay {
					keys = append(keys, relay.StreamKey{Room: n.Room, Publisher: n.Publisher, Track: n.Track})
				}
			}
			return len(keys) == 2
		default:
			return false
		}
	})
	// force gives B and C their two parents; the controller's refresh
	// (every 2 s) gives each node its own command back, so it is applied
	// again at every poll
	force := func() {
		for _, k := range keys {
			for _, err := range []error{a.s.Cascade().SetNeed(k, []relay.NodeID{b.id, cc.id}),
				b.s.Cascade().SetForward(k, []relay.NodeID{cc.id}, true), cc.s.Cascade().SetForward(k, []relay.NodeID{b.id}, true)} {
				if err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	sent := func() float64 { return a.counter(t, "traverse_relay_sent_total") }
	delivered := func(n *cascadeNode) float64 { return n.counter(t, "traverse_relay_delivered_total") }
	dups := func(n *cascadeNode) float64 {
		return n.counter(t, "traverse_relay_dropped_total", "reason", "duplicate")
	}
	force()
	settle := sent()
	testkit.WaitFor(t, 10*time.Second, "A sending 60 more", func() bool {
		force()
		return sent() > settle+60
	})
	// the packets are counted where they start, at the publisher: A's
	// sent counter is not twice the packets when a controller refresh
	// left A sending to one node for a while before the next force
	p0 := float64(pub.Sent())
	s0, b0, c0, db0, dc0 := sent(), delivered(b), delivered(cc), dups(b), dups(cc)
	testkit.WaitFor(t, 10*time.Second, "A sending 400 more (200 packets to each of B and C)", func() bool {
		force()
		return sent() > s0+400
	})
	db, dc, ddb, ddc := delivered(b)-b0, delivered(cc)-c0, dups(b)-db0, dups(cc)-dc0
	packets := float64(pub.Sent()) - p0
	t.Logf("over one window with two parents each: the publisher sent %v packets, A sent %v messages; B delivered %v and dropped %v duplicates, C delivered %v and dropped %v",
		packets, sent()-s0, db, ddb, dc, ddc)
	for _, n := range []struct {
		name             string
		delivered, drops float64
	}{{"B", db, ddb}, {"C", dc, ddc}} {
		if n.delivered < 0.9*packets || n.delivered > 1.1*packets {
			t.Errorf("%s delivered %v messages of %v packets: duplicates reached its SFU", n.name, n.delivered, packets)
		}
		if n.drops < 0.25*packets {
			t.Errorf("%s dropped %v duplicates of %v packets: it did not have two parents", n.name, n.drops, packets)
		}
	}
}
