package cluster_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cluster"
	"github.com/traverse-rtc/traverse/internal/cluster/clustertest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func openStore(t *testing.T, c *bus.Client, opts cluster.Options) *cluster.Store {
	t.Helper()
	s, err := cluster.Open(ctxT(t, 15*time.Second), c.Conn(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// newStore starts a cluster of n servers and opens the store as a
// controller, creating the buckets.
func newStore(t *testing.T, n int) (*clustertest.Cluster, *bus.Client, *cluster.Store) {
	t.Helper()
	c := clustertest.Start(t, n)
	ctl := c.Connect("ctl", bus.RoleController, "")
	return c, ctl, openStore(t, ctl, cluster.Options{Create: true})
}

func room(name, node string, n int) cluster.RoomRecord {
	return cluster.RoomRecord{Room: name, Node: node, Participants: n, Updated: time.Now()}
}

// TestStoreReplicatedSurvivesServerLoss: on three servers the buckets are
// R3; with one server gone, every room is still read and written.
func TestStoreReplicatedSurvivesServerLoss(t *testing.T) {
	c, ctl, s := newStore(t, 3)
	if r := cluster.Replicas(ctl.Conn()); r != 3 {
		t.Fatalf("replicas %d on three servers", r)
	}
	ctx := ctxT(t, 20*time.Second)
	for _, name := range []string{"r1", "r2", "r3"} {
		if _, err := s.PutRoom(ctx, room(name, "sfu-1", 2), 0); err != nil {
			t.Fatal(err)
		}
	}
	// Lose one server (perhaps the controller's own: it reconnects).
	c.Servers[2].Close()
	var got []cluster.Entry[cluster.RoomRecord]
	testkit.WaitFor(t, 10*time.Second, "rooms readable with one server of three gone", func() bool {
		var err error
		got, err = s.Rooms(ctxT(t, time.Second))
		return err == nil && len(got) == 3
	})
	testkit.WaitFor(t, 10*time.Second, "r2 read with one server gone", func() bool {
		e, err := s.Room(ctxT(t, time.Second), "r2")
		return err == nil && e.Value.Node == "sfu-1"
	})
	testkit.WaitFor(t, 10*time.Second, "a write with one server gone", func() bool {
		_, err := s.PutRoom(ctxT(t, time.Second), room("r4", "sfu-2", 1), 0)
		return err == nil || errors.Is(err, cluster.ErrConflict)
	})
}

// TestStorePermissions: the controller keeps every bucket; signal reads
// the room directory and can neither write it nor touch the other
// buckets; a node has no JetStream rights at all.
func TestStorePermissions(t *testing.T) {
	c, ctl, s := newStore(t, 1)
	ctx := ctxT(t, 20*time.Second)
	if _, err := s.PutRoom(ctx, room("r1", "sfu-1", 1), 0); err != nil {
		t.Fatal(err)
	}
	if err := s.PutNode(ctx, cluster.NodeRecord{Node: "sfu-1", UDP: "192.0.2.1:7882", LastSeen: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Nodes(ctx); err != nil {
		t.Fatal(err)
	}
	if n := ctl.Refused(); n != 0 {
		t.Fatalf("controller refused %d times", n)
	}

	sig := c.Connect("sig", bus.RoleSignal, "")
	rs := openStore(t, sig, cluster.Options{Buckets: []string{bus.BucketRooms}})
	if e, err := rs.Room(ctx, "r1"); err != nil || e.Value.Node != "sfu-1" {
		t.Fatalf("signal read: %+v %v", e, err)
	}
	short := func() context.Context { return ctxT(t, 500*time.Millisecond) }
	if _, err := rs.PutRoom(short(), room("r1", "evil", 1), 0); err == nil {
		t.Error("signal wrote the room directory")
	}
	if _, err := cluster.Open(short(), sig.Conn(), cluster.Options{Buckets: []string{bus.BucketLeader}}); err == nil {
		t.Error("signal bound the leader bucket")
	}
	if _, err := cluster.Open(short(), sig.Conn(), cluster.Options{Create: true, Buckets: []string{bus.BucketRooms}}); err == nil {
		t.Error("signal created a bucket")
	}
	node := c.Connect("node", bus.RoleNode, "sfu-1")
	if _, err := cluster.Open(short(), node.Conn(), cluster.Options{Buckets: []string{bus.BucketRooms}}); err == nil {
		t.Error("a node bound the room directory")
	}
	if e, err := s.Room(ctx, "r1"); err != nil || e.Value.Node != "sfu-1" {
		t.Fatalf("after the attempts: %+v %v", e, err)
	}
}

// TestStoreBadRecords: a record that does not decode or validate is
// dropped from listings, counted, and reads as ErrBadRecord.
func TestStoreBadRecords(t *testing.T) {
	_, ctl, s := newStore(t, 1)
	ctx := ctxT(t, 20*time.Second)
	if _, err := s.PutRoom(ctx, room("good", "sfu-1", 1), 0); err != nil {
		t.Fatal(err)
	}
	for key, v := range map[string]string{
		"junk":  "not json",
		"types": `{"room":"types","node":7}`,
		"bad":   `{"room":"bad","node":"has space","participants":1}`,
		"neg":   `{"room":"neg","node":"sfu-1","participants":-3}`,
	} {
		if _, err := ctl.Conn().Request("$KV."+bus.BucketRooms+"."+key, []byte(v), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Rooms(ctx)
	if err != nil || len(got) != 1 || got[0].Value.Room != "good" {
		t.Fatalf("rooms %+v %v", got, err)
	}
	if n := s.BadRecords(); n != 4 {
		t.Fatalf("bad records %d, want 4", n)
	}
	if _, err := s.Room(ctx, "junk"); !errors.Is(err, cluster.ErrBadRecord) {
		t.Fatalf("junk: %v", err)
	}
}

// TestStoreCompareAndSet: a write based on an old revision is refused.
func TestStoreCompareAndSet(t *testing.T) {
	_, _, s := newStore(t, 1)
	ctx := ctxT(t, 10*time.Second)
	r1, err := s.PutRoom(ctx, room("r", "sfu-1", 1), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutRoom(ctx, room("r", "sfu-2", 1), 0); !errors.Is(err, cluster.ErrConflict) {
		t.Fatalf("create over a record: %v", err)
	}
	if _, err := s.PutRoom(ctx, room("r", "sfu-1", 2), r1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutRoom(ctx, room("r", "sfu-3", 9), r1); !errors.Is(err, cluster.ErrConflict) {
		t.Fatalf("stale write: %v", err)
	}
	if err := s.DeleteRoom(ctx, "r", r1); !errors.Is(err, cluster.ErrConflict) {
		t.Fatalf("stale delete: %v", err)
	}
}
