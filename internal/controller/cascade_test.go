package controller_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cluster/clustertest"
	"github.com/traverse-rtc/traverse/internal/controller"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// fakeRelayNode announces a relay address and id and keeps the last
// cascade command it was sent.
type fakeRelayNode struct {
	name string
	id   uint32
	bc   *bus.Client
	mu   sync.Mutex
	last *bus.CascadeCommand
	n    int
}

func (f *fakeRelayNode) cmd() (bus.CascadeCommand, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.last == nil {
		return bus.CascadeCommand{}, 0
	}
	return *f.last, f.n
}

// fakeSpec is a fake relay node: its name, relay id and links (peer ->
// RTT in microseconds).
type fakeSpec struct {
	name  string
	id    uint32
	links map[uint32]int64
}

// startFakeRelayNodes connects fake relay nodes that announce themselves,
// report their links every 200 ms and keep the commands they are sent.
func startFakeRelayNodes(t *testing.T, c *clustertest.Cluster, specs []fakeSpec) []*fakeRelayNode {
	t.Helper()
	var nodes []*fakeRelayNode
	for i, n := range specs {
		f := &fakeRelayNode{name: n.name, id: n.id, bc: c.Connect(n.name, bus.RoleNode, n.name)}
		if _, err := f.bc.SubscribeCascadeCommands(n.name, func(cmd bus.CascadeCommand) {
			f.mu.Lock()
			f.last, f.n = &cmd, f.n+1
			f.mu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, f)
		var links []bus.CascadeLink
		for peer, rtt := range n.links {
			links = append(links, bus.CascadeLink{Peer: peer, RTTUs: rtt, Up: true})
		}
		relayAddr := fmt.Sprintf("127.0.0.1:%d", 7901+i)
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			tk := time.NewTicker(200 * time.Millisecond)
			defer tk.Stop()
			for {
				_ = f.bc.AnnounceNode(bus.NodeAnnounce{Node: f.name, UDP: "127.0.0.1:7882", Time: time.Now(),
					Relay: relayAddr, RelayID: f.id})
				_ = f.bc.PublishCascadeReport(bus.CascadeReport{Node: f.name, ID: f.id, Time: time.Now(), Links: links})
				select {
				case <-stop:
					return
				case <-tk.C:
				}
			}
		}()
		t.Cleanup(func() { close(stop); <-done })
	}
	return nodes
}

// The controller's cascade on its own: routes from reports, needs and
// remote tracks from room events, a relay id claimed twice, forged
// reports.
func TestControllerCascade(t *testing.T) {
	c := clustertest.Start(t, 1)
	reg := prometheus.NewRegistry()
	ctl, err := controller.New(controller.Config{ID: "ctl-1", Bus: c.Config("ctl-1", bus.RoleController, ""), Cascade: true,
		Registerer: reg, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, ctl.Run)
	t.Cleanup(func() { ctl.Close() })
	nodes := startFakeRelayNodes(t, c, []fakeSpec{{"n1", 7, map[uint32]int64{8: 1000}}, {"n2", 8, map[uint32]int64{7: 1000}},
		{"n3", 7, map[uint32]int64{8: 1000}}})
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	testkit.WaitFor(t, 10*time.Second, "n1 and n2 routed to each other", func() bool {
		a, _ := n1.cmd()
		b, _ := n2.cmd()
		return slices.Equal(a.Routes, []bus.CascadeHop{{Dst: 8, Via: 8}}) && slices.Equal(b.Routes, []bus.CascadeHop{{Dst: 7, Via: 7}})
	})
	if cmd, _ := n1.cmd(); len(cmd.Peers) != 1 || cmd.Peers[0] != (bus.CascadePeer{ID: 8, Addr: "127.0.0.1:7902"}) {
		t.Fatalf("n1's peers %+v", cmd.Peers)
	}
	if _, n := n3.cmd(); n != 0 {
		t.Fatal("n3, which claims n1's relay id, got a command")
	}
	// A report under n1's name with n2's id is counted and ignored.
	bad := c.Connect("n1-forger", bus.RoleNode, "n1")
	if err := bad.PublishCascadeReport(bus.CascadeReport{Node: "n1", ID: 8, Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "the forged report counted", func() bool {
		return testutil.ToFloat64(metric(t, reg, "traverse_controller_cascade_bad_reports_total")) >= 1
	})

	// A room on n1 and n2, a track published on n1.
	for _, f := range []*fakeRelayNode{n1, n2} {
		if err := f.bc.PublishRoomEvent(bus.RoomEvent{Type: bus.EventParticipantJoined, Room: "r", Node: f.name,
			Session: "s-" + f.name, Identity: f.name, Time: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	ti := &bus.TrackInfo{ID: "v", StreamID: "s-n1", Kind: "video", Codec: "VP8", ClockRate: 90000, Simulcast: 1}
	if err := n1.bc.PublishRoomEvent(bus.RoomEvent{Type: bus.EventTrackPublished, Room: "r", Node: "n1", Session: "s-n1",
		Identity: "n1", Track: ti, Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "n1 commanded to push the track to n2, n2 told of it", func() bool {
		a, _ := n1.cmd()
		b, _ := n2.cmd()
		return len(a.Needs) == 1 && a.Needs[0].Track == "v" && slices.Equal(a.Needs[0].Nodes, []uint32{8}) &&
			len(b.Tracks) == 1 && b.Tracks[0].Node == 7 && b.Tracks[0].Track.ClockRate == 90000 && len(b.Needs) == 0
	})
	// The track is unpublished: both forget it.
	if err := n1.bc.PublishRoomEvent(bus.RoomEvent{Type: bus.EventTrackUnpublished, Room: "r", Node: "n1", Session: "s-n1",
		Identity: "n1", Track: ti, Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "the track gone from both commands", func() bool {
		a, _ := n1.cmd()
		b, _ := n2.cmd()
		return len(a.Needs) == 0 && len(b.Tracks) == 0
	})
}

// newCascadeController starts a controller with the cascade on c.
func newCascadeController(t *testing.T, c *clustertest.Cluster, id string, cfg controller.Config) (*controller.Controller, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.ID, cfg.Bus, cfg.Cascade, cfg.Registerer = id, c.Config(id, bus.RoleController, ""), true, reg
	cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctl, err := controller.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, ctl.Run)
	t.Cleanup(func() { ctl.Close() })
	return ctl, reg
}

// join puts a participant of room on each of nodes.
func join(t *testing.T, room string, nodes ...*fakeRelayNode) {
	t.Helper()
	for _, f := range nodes {
		if err := f.bc.PublishRoomEvent(bus.RoomEvent{Type: bus.EventParticipantJoined, Room: room, Node: f.name,
			Session: "s-" + f.name, Identity: f.name, Time: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestControllerCascadeTree: the controller commands the nearest node
// holding a track to forward it. n2 and n3 are close (1 ms), both far
// from n1 (10 ms): a track published on n1 goes to n2 only, and n2 is
// commanded to forward it to n3 (a relay need); when n2's participant
// leaves, n2 neither needs nor holds the track and n1 sends to n3 itself.
func TestControllerCascadeTree(t *testing.T) {
	c := clustertest.Start(t, 1)
	newCascadeController(t, c, "ctl-1", controller.Config{})
	ns := startFakeRelayNodes(t, c, []fakeSpec{
		{"n1", 7, map[uint32]int64{8: 10_000, 9: 10_000}},
		{"n2", 8, map[uint32]int64{7: 10_000, 9: 1_000}},
		{"n3", 9, map[uint32]int64{7: 10_000, 8: 1_000}}})
	n1, n2, n3 := ns[0], ns[1], ns[2]
	join(t, "r", n1, n2, n3)
	ti := &bus.TrackInfo{ID: "v", StreamID: "s-n1", Kind: "video", Codec: "VP8", ClockRate: 90000}
	if err := n1.bc.PublishRoomEvent(bus.RoomEvent{Type: bus.EventTrackPublished, Room: "r", Node: "n1", Session: "s-n1",
		Identity: "n1", Track: ti, Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	want := func(a, b, c []bus.CascadeNeed) func() bool {
		return func() bool {
			x, _ := n1.cmd()
			y, _ := n2.cmd()
			z, _ := n3.cmd()
			return slices.EqualFunc(x.Needs, a, needEqual) && slices.EqualFunc(y.Needs, b, needEqual) &&
				slices.EqualFunc(z.Needs, c, needEqual)
		}
	}
	need := func(relay bool, nodes ...uint32) []bus.CascadeNeed {
		return []bus.CascadeNeed{{Room: "r", Publisher: "s-n1", Track: "v", Nodes: nodes, Relay: relay}}
	}
	testkit.WaitFor(t, 10*time.Second, "n1 to send to n2 only, n2 to forward to n3", want(need(false, 8), need(true, 9), nil))
	if y, _ := n2.cmd(); len(y.Tracks) != 1 || y.Tracks[0].Node != 7 {
		t.Fatalf("n2's tracks %+v", y.Tracks)
	}
	if z, _ := n3.cmd(); len(z.Tracks) != 1 || z.Tracks[0].Node != 7 {
		t.Fatalf("n3's tracks %+v: feedback goes to the publisher's node", z.Tracks)
	}
	if err := n2.bc.PublishRoomEvent(bus.RoomEvent{Type: bus.EventParticipantLeft, Room: "r", Node: "n2",
		Session: "s-n2", Identity: "n2", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "n1 to send to n3 itself, n2 out of the tree", want(need(false, 9), nil, nil))
}

func needEqual(a, b bus.CascadeNeed) bool {
	return a.Room == b.Room && a.Publisher == b.Publisher && a.Track == b.Track && a.Relay == b.Relay && slices.Equal(a.Nodes, b.Nodes)
}

// TestControllerCascadeKeyRotation: the leader steps the relay key epoch
// every CascadeKeyRotation and tells the nodes to keep the previous
// epoch for the overlap (half of it here) and then to drop it; the epoch
// is kept in the leader bucket, and a new leader continues from it
// rather than from 0.
func TestControllerCascadeKeyRotation(t *testing.T) {
	c := clustertest.Start(t, 1)
	ctx1, cancel1 := context.WithCancel(context.Background())
	reg := prometheus.NewRegistry()
	ctl1, err := controller.New(controller.Config{ID: "ctl-1", Bus: c.Config("ctl-1", bus.RoleController, ""), Cascade: true,
		CascadeKeyRotation: 2 * time.Second, Registerer: reg, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	done1 := make(chan error, 1)
	go func() { done1 <- ctl1.Run(ctx1) }()
	t.Cleanup(func() { cancel1(); ctl1.Close() })
	ns := startFakeRelayNodes(t, c, []fakeSpec{{"n1", 7, map[uint32]int64{8: 1000}}, {"n2", 8, map[uint32]int64{7: 1000}}})
	n1 := ns[0]
	// Every command n1 gets, in order.
	var mu sync.Mutex
	var seen []bus.CascadeCommand
	if _, err := n1.bc.SubscribeCascadeCommands("n1", func(cmd bus.CascadeCommand) {
		mu.Lock()
		seen = append(seen, cmd)
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	has := func(pred func(bus.CascadeCommand) bool) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			return slices.ContainsFunc(seen, pred)
		}
	}
	testkit.WaitFor(t, 10*time.Second, "epoch 1 in its overlap", has(func(c bus.CascadeCommand) bool { return c.Epoch == 1 && c.KeepPrev }))
	testkit.WaitFor(t, 5*time.Second, "epoch 1 after its overlap", has(func(c bus.CascadeCommand) bool { return c.Epoch == 1 && !c.KeepPrev }))
	testkit.WaitFor(t, 5*time.Second, "epoch 2", has(func(c bus.CascadeCommand) bool { return c.Epoch == 2 }))
	if r := testutil.ToFloat64(metric(t, reg, "traverse_controller_cascade_key_rotations_total")); r < 2 {
		t.Fatalf("%v rotations counted", r)
	}

	// A second controller takes over when the first stops.
	ctl2, _ := newCascadeController(t, c, "ctl-2", controller.Config{CascadeKeyRotation: time.Hour})
	testkit.Stop(t, "ctl-1", cancel1, done1)
	testkit.WaitFor(t, 15*time.Second, "ctl-2 commanding", has(func(c bus.CascadeCommand) bool { return c.Controller == "ctl-2" }))
	mu.Lock()
	defer mu.Unlock()
	var last uint16
	for _, cmd := range seen {
		if cmd.Controller == "ctl-1" {
			last = max(last, cmd.Epoch)
		}
	}
	for _, cmd := range seen {
		if cmd.Controller == "ctl-2" && cmd.Epoch != last {
			t.Fatalf("the new leader commands epoch %d, the stored one is %d", cmd.Epoch, last)
		}
	}
	if ctl2.Leading() == 0 {
		t.Fatal("ctl-2 not leading")
	}
}
