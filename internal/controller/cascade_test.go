package controller_test

import (
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
	var nodes []*fakeRelayNode
	for i, n := range []struct {
		name string
		id   uint32
	}{{"n1", 7}, {"n2", 8}, {"n3", 7}} {
		f := &fakeRelayNode{name: n.name, id: n.id, bc: c.Connect(n.name, bus.RoleNode, n.name)}
		if _, err := f.bc.SubscribeCascadeCommands(n.name, func(cmd bus.CascadeCommand) {
			f.mu.Lock()
			f.last, f.n = &cmd, f.n+1
			f.mu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, f)
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			tk := time.NewTicker(200 * time.Millisecond)
			defer tk.Stop()
			for {
				_ = f.bc.AnnounceNode(bus.NodeAnnounce{Node: f.name, UDP: "127.0.0.1:7882", Time: time.Now(),
					Relay: "127.0.0.1:" + []string{"7901", "7902", "7903"}[i], RelayID: f.id})
				var peer uint32 = 8
				if f.id == 8 {
					peer = 7
				}
				_ = f.bc.PublishCascadeReport(bus.CascadeReport{Node: f.name, ID: f.id, Time: time.Now(),
					Links: []bus.CascadeLink{{Peer: peer, RTTUs: 1000, Up: true}}})
				select {
				case <-stop:
					return
				case <-tk.C:
				}
			}
		}()
		t.Cleanup(func() { close(stop); <-done })
	}
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
