package controller_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cluster"
	"github.com/traverse-rtc/traverse/internal/cluster/clustertest"
	"github.com/traverse-rtc/traverse/internal/controller"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// running is a controller whose Run the test can end.
type running struct {
	*controller.Controller
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned, err set
	err    error
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		if r.err != nil {
			t.Fatal(r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	r.Close()
}

func startController(t *testing.T, c *clustertest.Cluster, id string, servers ...int) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	// The fake nodes announce every 200 ms.
	ctl, err := controller.New(controller.Config{ID: id, Bus: c.Config(id, bus.RoleController, "", servers...),
		NodeDeadAfter: 2 * time.Second,
		Registerer:    reg, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Controller: ctl, reg: reg, cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = ctl.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
		ctl.Close()
	})
	return r
}

// leader waits for exactly one of cs to lead and returns it.
func leader(t *testing.T, d time.Duration, cs ...*running) *running {
	t.Helper()
	var l *running
	testkit.WaitFor(t, d, "one leader", func() bool {
		n := 0
		for _, c := range cs {
			if c.Leading() != 0 {
				n, l = n+1, c
			}
		}
		return n == 1
	})
	return l
}

// TestControllerFailover: two controllers on a three-server cluster; one
// leads; killed without releasing the lease (its context ends, the lease
// stays), the other leads within 5 s; a clean stop hands over faster.
func TestControllerFailover(t *testing.T) {
	c := clustertest.Start(t, 3)
	a := startController(t, c, "ctl-a", 0)
	b := startController(t, c, "ctl-b", 1)
	l := leader(t, 10*time.Second, a, b)
	other := b
	if l == b {
		other = a
	}
	l.Abandon()
	start := time.Now()
	l.stop(t)
	t.Logf("stopped in %v", time.Since(start))
	leader(t, 5*time.Second, other)
	took := time.Since(start)
	t.Logf("takeover after a kill: %v", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Fatalf("takeover took %v", took)
	}
	// A third controller; the leader stops cleanly (releases): the new one
	// leads within one lease step.
	t0 := time.Now()
	d := startController(t, c, "ctl-d", 2)
	t.Logf("third controller started in %v", time.Since(t0))
	start = time.Now()
	other.stop(t)
	leader(t, 3*time.Second, d)
	t.Logf("takeover after a release: %v", time.Since(start).Round(time.Millisecond))
}

// TestControllerStaleLeader: when another holder takes the lease (here
// forced into the bucket by the test), the leader's next renewal is
// refused by revision and it stops acting at once.
func TestControllerStaleLeader(t *testing.T) {
	c := clustertest.Start(t, 1)
	a := startController(t, c, "ctl-a")
	leader(t, 10*time.Second, a)
	// An intruder with the controller role overwrites the lease.
	nc := c.Connect("y", bus.RoleController, "").Conn()
	if _, err := nc.Request("$KV."+bus.BucketLeader+"."+cluster.LeaseKey, []byte(`{"holder":"intruder","ttl_ms":60000}`), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 2*time.Second, "the leader stops", func() bool { return a.Leading() == 0 })
	if n := testutil.ToFloat64(metric(t, a.reg, "traverse_controller_lease_lost_total")); n != 1 {
		t.Fatalf("lease lost %v", n)
	}
}

// metric returns the collector named name from reg as a gatherer-backed
// value.
func metric(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	return gathered{reg: reg, name: name}
}

type gathered struct {
	reg  *prometheus.Registry
	name string
}

func (g gathered) Describe(chan<- *prometheus.Desc) {}
func (g gathered) Collect(ch chan<- prometheus.Metric) {
	mfs, _ := g.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != g.name {
			continue
		}
		for _, m := range mf.GetMetric() {
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(g.name, "", nil, nil), prometheus.UntypedValue, v)
		}
	}
}

// fakeNode announces as node on its own credential until stopped.
type fakeNode struct {
	bc   *bus.Client
	id   string
	stop chan struct{}
	done chan struct{}
}

// leaderAndSignal starts a one-server cluster with controller ctl-a
// leading, and a signal connection whose NodeDown messages arrive on downs.
func leaderAndSignal(t *testing.T) (c *clustertest.Cluster, a *running, sig *bus.Client, downs chan bus.NodeDown) {
	t.Helper()
	c = clustertest.Start(t, 1)
	a = startController(t, c, "ctl-a")
	leader(t, 10*time.Second, a)
	sig = c.Connect("sig", bus.RoleSignal, "")
	downs = make(chan bus.NodeDown, 10)
	if _, err := sig.SubscribeNodeDown(func(d bus.NodeDown) { downs <- d }); err != nil {
		t.Fatal(err)
	}
	return c, a, sig, downs
}

func startNode(t *testing.T, c *clustertest.Cluster, id, region string) *fakeNode {
	t.Helper()
	n := &fakeNode{bc: c.Connect(id, bus.RoleNode, id), id: id, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(n.done)
		tk := time.NewTicker(200 * time.Millisecond)
		defer tk.Stop()
		for {
			_ = n.bc.AnnounceNode(bus.NodeAnnounce{Node: id, Region: region, UDP: "192.0.2.1:7882", Time: time.Now()})
			select {
			case <-n.stop:
				return
			case <-tk.C:
			}
		}
	}()
	t.Cleanup(n.kill)
	return n
}

func (n *fakeNode) kill() {
	select {
	case <-n.stop:
	default:
		close(n.stop)
	}
	<-n.done
}

func (n *fakeNode) event(t *testing.T, typ bus.RoomEventType, room, session string) {
	t.Helper()
	if err := n.bc.PublishRoomEvent(bus.RoomEvent{Type: typ, Room: room, Node: n.id, Session: session, Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
}

// TestControllerNodeDead: the leader registers nodes and rooms from the
// bus; a node that stops announcing is declared dead within 2 s (plus the
// check period): NodeDown reaches signal, the registry says dead, its
// rooms are marked for re-placement, and the room's first join on another
// node moves it.
func TestControllerNodeDead(t *testing.T) {
	c, _, sig, downs := leaderAndSignal(t)
	n1, n2 := startNode(t, c, "sfu-1", "eu"), startNode(t, c, "sfu-2", "us")
	n1.event(t, bus.EventParticipantJoined, "r1", "s1")
	n1.event(t, bus.EventParticipantJoined, "r1", "s2")
	n1.event(t, bus.EventParticipantJoined, "r2", "s3")
	n1.event(t, bus.EventParticipantLeft, "r2", "s3")
	s, err := cluster.Open(context.Background(), sig.Conn(), cluster.Options{Buckets: []string{bus.BucketRooms}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	testkit.WaitFor(t, 5*time.Second, "r1 on sfu-1 with 2, r2 gone", func() bool {
		e, err := s.Room(ctx, "r1")
		_, err2 := s.Room(ctx, "r2")
		return err == nil && e.Value.Node == "sfu-1" && e.Value.Participants == 2 && errors.Is(err2, cluster.ErrNotFound)
	})
	killed := time.Now()
	n1.kill()
	var d bus.NodeDown
	select {
	case d = <-downs:
	case <-time.After(5 * time.Second):
		t.Fatal("no NodeDown")
	}
	took := time.Since(killed)
	t.Logf("node down declared %v after its last announcement", took.Round(time.Millisecond))
	if d.Node != "sfu-1" || d.Reason != bus.NodeDownDead || d.Controller != "ctl-a" || d.Lease == 0 {
		t.Fatalf("node down %+v", d)
	}
	if took > 3*time.Second {
		t.Fatalf("declared after %v", took)
	}
	testkit.WaitFor(t, 2*time.Second, "r1 marked for re-placement", func() bool {
		e, err := s.Room(ctx, "r1")
		return err == nil && e.Value.Replace
	})
	n2.event(t, bus.EventParticipantJoined, "r1", "s4")
	testkit.WaitFor(t, 2*time.Second, "r1 moved to sfu-2", func() bool {
		e, err := s.Room(ctx, "r1")
		return err == nil && !e.Value.Replace && e.Value.Node == "sfu-2" && e.Value.Participants == 1
	})
	select {
	case d := <-downs:
		t.Fatalf("second node down %+v", d)
	default:
	}
}

// TestControllerForgery: a node cannot declare another node down (the
// subject is not its own), cannot announce for another node, and
// malformed events are dropped and counted; the controller keeps working.
func TestControllerForgery(t *testing.T) {
	c, a, sig, downs := leaderAndSignal(t)
	evil := c.Connect("evil", bus.RoleNode, "evil")
	if err := evil.PublishNodeDown(bus.NodeDown{Node: "sfu-1", Reason: "dead", Controller: "ctl-a", Lease: 1}); err != nil {
		t.Fatal(err)
	}
	nc := evil.Conn()
	for _, p := range [][2]string{
		{bus.RoomEventsSubject("evil", "r1"), `{"type":"participant_joined","room":"r1","node":"sfu-1"}`},
		{bus.RoomEventsSubject("evil", "r1"), `not json`},
		{bus.RoomEventsSubject("evil", "r1"), `{"type":"participant_joined","room":7}`},
		{bus.NodeAnnounceSubject("evil"), `{"node":"sfu-1","udp":"192.0.2.9:1"}`},
	} {
		_ = nc.Publish(p[0], []byte(p[1]))
	}
	_ = nc.Flush()
	testkit.WaitFor(t, 5*time.Second, "four bad messages counted", func() bool {
		return testutil.ToFloat64(metric(t, a.reg, "traverse_controller_bad_messages_total")) >= 4
	})
	testkit.WaitFor(t, 2*time.Second, "the node's forbidden publish refused", func() bool { return evil.Refused() > 0 })
	select {
	case d := <-downs:
		t.Fatalf("forged node down delivered: %+v", d)
	default:
	}
	// Still working.
	n := startNode(t, c, "sfu-1", "")
	n.event(t, bus.EventParticipantJoined, "r9", "s1")
	s, _ := cluster.Open(context.Background(), sig.Conn(), cluster.Options{Buckets: []string{bus.BucketRooms}})
	testkit.WaitFor(t, 5*time.Second, "r9 on sfu-1", func() bool {
		e, err := s.Room(context.Background(), "r9")
		return err == nil && e.Value.Node == "sfu-1"
	})
}
