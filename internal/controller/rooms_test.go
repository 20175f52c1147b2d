package controller_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cluster"
	"github.com/traverse-rtc/traverse/internal/cluster/clustertest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// threeNodes is leaderAndSignal with three nodes announcing and the room
// directory open for reading.
func threeNodes(t *testing.T) (c *clustertest.Cluster, a *running, s *cluster.Store, downs chan bus.NodeDown, n1, n2, n3 *fakeNode) {
	t.Helper()
	c, a, sig, downs := leaderAndSignal(t)
	n1, n2, n3 = startNode(t, c, "sfu-1", ""), startNode(t, c, "sfu-2", ""), startNode(t, c, "sfu-3", "")
	s, err := cluster.Open(context.Background(), sig.Conn(), cluster.Options{Buckets: []string{bus.BucketRooms}})
	if err != nil {
		t.Fatal(err)
	}
	return c, a, s, downs, n1, n2, n3
}

// TestControllerSpanningRoom: a room with participants on three nodes
// (the cascade) keeps its home, the node of its first join, and counts
// its participants per node; every node's leaves are counted; the room is
// removed at the last leave, on whichever node. Half way, the leader
// stops and a controller that never saw the events takes over: it
// continues from the directory's record.
func TestControllerSpanningRoom(t *testing.T) {
	c, a, s, _, n1, n2, n3 := threeNodes(t)
	ctx := context.Background()
	// want waits for the record: home, then the count on each node
	want := func(what string, home string, counts map[string]int) {
		t.Helper()
		var last string
		if !testkit.Eventually(5*time.Second, func() bool {
			e, err := s.Room(ctx, "span")
			if err != nil {
				last = err.Error()
				return false
			}
			r := e.Value
			last = fmt.Sprintf("%+v", r)
			total := 0
			for n, k := range counts {
				if r.Count(n) != k {
					return false
				}
				total += k
			}
			return r.Node == home && r.Participants == total && len(r.Nodes) == len(counts) && !r.Replace
		}) {
			t.Fatalf("%s: the record is %s", what, last)
		}
	}
	n2.event(t, bus.EventParticipantJoined, "span", "s1")
	// events of different nodes come in any order: the first join first
	want("the room homed on its first join's node", "sfu-2", map[string]int{"sfu-2": 1})
	n1.event(t, bus.EventParticipantJoined, "span", "s2")
	n3.event(t, bus.EventParticipantJoined, "span", "s3")
	n1.event(t, bus.EventParticipantJoined, "span", "s4")
	n3.event(t, bus.EventParticipantJoined, "span", "s5")
	want("five on three nodes, home sfu-2", "sfu-2", map[string]int{"sfu-1": 2, "sfu-2": 1, "sfu-3": 2})
	n3.event(t, bus.EventParticipantLeft, "span", "s3")
	n1.event(t, bus.EventParticipantJoined, "span", "s6")
	want("a leave on sfu-3 counted", "sfu-2", map[string]int{"sfu-1": 3, "sfu-2": 1, "sfu-3": 1})
	n2.event(t, bus.EventParticipantLeft, "span", "s1")
	want("the home's last participant left: home stays", "sfu-2", map[string]int{"sfu-1": 3, "sfu-3": 1})

	// takeover: b starts now (it saw none of the events), a stops
	b := startController(t, c, "ctl-b")
	a.stop(t)
	leader(t, 10*time.Second, b)
	n1.event(t, bus.EventParticipantLeft, "span", "s2")
	n3.event(t, bus.EventParticipantLeft, "span", "s5")
	want("the new leader continues from the record", "sfu-2", map[string]int{"sfu-1": 2})
	n2.event(t, bus.EventParticipantLeft, "span", "s9") // sfu-2 holds none: not counted
	n1.event(t, bus.EventParticipantLeft, "span", "s4")
	want("one left on sfu-1", "sfu-2", map[string]int{"sfu-1": 1})
	n1.event(t, bus.EventParticipantLeft, "span", "s6")
	testkit.WaitFor(t, 5*time.Second, "the room removed at its last leave", func() bool {
		_, err := s.Room(ctx, "span")
		return errors.Is(err, cluster.ErrNotFound)
	})
}

// TestControllerSpanningRoomNodeDown: a spanning room's home declared
// dead moves home to its node with the most participants, and the dead
// node's participants are no longer counted; a room whose last
// participants were on the dead node (homed elsewhere) is removed.
func TestControllerSpanningRoomNodeDown(t *testing.T) {
	_, _, s, downs, n1, n2, n3 := threeNodes(t)
	n1.event(t, bus.EventParticipantJoined, "span", "s1")
	testkit.WaitFor(t, 5*time.Second, "the room on sfu-1", func() bool {
		e, err := s.Room(context.Background(), "span")
		return err == nil && e.Value.Node == "sfu-1"
	})
	n2.event(t, bus.EventParticipantJoined, "span", "s2")
	n3.event(t, bus.EventParticipantJoined, "span", "s3")
	n3.event(t, bus.EventParticipantJoined, "span", "s4")
	// r2, homed on sfu-2, is left with one participant on sfu-1
	n2.event(t, bus.EventParticipantJoined, "r2", "s5")
	testkit.WaitFor(t, 5*time.Second, "r2 on sfu-2", func() bool {
		e, err := s.Room(context.Background(), "r2")
		return err == nil && e.Value.Node == "sfu-2"
	})
	n1.event(t, bus.EventParticipantJoined, "r2", "s6")
	testkit.WaitFor(t, 5*time.Second, "r2 with one on sfu-1", func() bool {
		e, err := s.Room(context.Background(), "r2")
		return err == nil && e.Value.Count("sfu-1") == 1
	})
	n2.event(t, bus.EventParticipantLeft, "r2", "s5")
	testkit.WaitFor(t, 5*time.Second, "four on three nodes, r2's one on sfu-1", func() bool {
		e, err := s.Room(context.Background(), "span")
		e2, err2 := s.Room(context.Background(), "r2")
		return err == nil && e.Value.Participants == 4 && err2 == nil && e2.Value.Count("sfu-1") == 1 && e2.Value.Participants == 1
	})
	n1.kill()
	select {
	case <-downs:
	case <-time.After(5 * time.Second):
		t.Fatal("no NodeDown")
	}
	testkit.WaitFor(t, 5*time.Second, "home moved to sfu-3, sfu-1 forgotten", func() bool {
		e, err := s.Room(context.Background(), "span")
		return err == nil && e.Value.Node == "sfu-3" && !e.Value.Replace && e.Value.Participants == 3 &&
			slices.Equal(e.Value.Nodes, []cluster.RoomNodeCount{{Node: "sfu-2", Participants: 1}, {Node: "sfu-3", Participants: 2}})
	})
	if !testkit.Eventually(5*time.Second, func() bool {
		_, err := s.Room(context.Background(), "r2")
		return errors.Is(err, cluster.ErrNotFound)
	}) {
		e, err := s.Room(context.Background(), "r2")
		t.Fatalf("r2, whose last participant was on sfu-1, still there: %+v %v", e.Value, err)
	}
}
