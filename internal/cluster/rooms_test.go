package cluster

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"
)

// TestRoomRecordCounts: joins and leaves on several nodes, a dead node
// dropped, the home moved off a node that went down.
func TestRoomRecordCounts(t *testing.T) {
	type step struct {
		op, node string // join, leave, drop, down (Rehome)
	}
	for _, c := range []struct {
		name    string
		steps   []step
		home    string
		total   int
		nodes   []RoomNodeCount
		replace bool
		refused int // leaves not counted
	}{
		{name: "three nodes", home: "a", total: 4,
			steps: []step{{"join", "a"}, {"join", "b"}, {"join", "c"}, {"join", "b"}, {"join", "c"}, {"leave", "c"}},
			nodes: []RoomNodeCount{{"a", 1}, {"b", 2}, {"c", 1}}},
		{name: "the home empties, stays home", home: "a", total: 1,
			steps: []step{{"join", "a"}, {"join", "b"}, {"leave", "a"}},
			nodes: []RoomNodeCount{{"b", 1}}},
		{name: "a leaver of a node holding none", home: "a", total: 1, refused: 2,
			steps: []step{{"join", "a"}, {"leave", "b"}, {"leave", "zz"}},
			nodes: []RoomNodeCount{{"a", 1}}},
		{name: "the last leave anywhere empties it", home: "a", total: 0,
			steps: []step{{"join", "a"}, {"join", "c"}, {"leave", "a"}, {"leave", "c"}}},
		{name: "dead home: moves to the node with most", home: "c", total: 3,
			steps: []step{{"join", "a"}, {"join", "b"}, {"join", "c"}, {"join", "c"}, {"join", "a"}, {"drop", "a"}, {"down", "a"}},
			nodes: []RoomNodeCount{{"b", 1}, {"c", 2}}},
		{name: "draining home alone: to be placed again", home: "a", total: 2, replace: true,
			steps: []step{{"join", "a"}, {"join", "a"}, {"down", "a"}},
			nodes: []RoomNodeCount{{"a", 2}}},
		{name: "another node down: home stays", home: "a", total: 1,
			steps: []step{{"join", "a"}, {"join", "b"}, {"drop", "b"}, {"down", "b"}},
			nodes: []RoomNodeCount{{"a", 1}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := RoomRecord{Room: "r", Node: c.steps[0].node}
			refused := 0
			for _, s := range c.steps {
				switch s.op {
				case "join":
					r.Join(s.node)
				case "leave":
					if !r.Leave(s.node) {
						refused++
					}
				case "drop":
					r.DropNode(s.node)
				case "down":
					r.Rehome(s.node, func(n string) bool { return n != s.node })
				}
				if err := r.Validate(); err != nil {
					t.Fatalf("after %v: %v", s, err)
				}
			}
			if r.Node != c.home || r.Participants != c.total || !slices.Equal(r.Nodes, c.nodes) || r.Replace != c.replace || refused != c.refused {
				t.Fatalf("record %+v (%d leaves refused), want home %s, %d in all, %v, replace %v, %d refused",
					r, refused, c.home, c.total, c.nodes, c.replace, c.refused)
			}
		})
	}
}

// TestRoomRecordOldAndBad: a record written before rooms spanned nodes
// decodes as its node holding every participant (and counts on from
// there); a new record decodes to itself; inconsistent ones are refused.
func TestRoomRecordOldAndBad(t *testing.T) {
	old, err := DecodeRoom([]byte(`{"room":"r1","node":"sfu-1","participants":4,"updated":"2026-01-01T00:00:00Z"}`))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(old.Nodes, []RoomNodeCount{{"sfu-1", 4}}) || old.Count("sfu-1") != 4 {
		t.Fatalf("old record %+v", old)
	}
	old.Join("sfu-2")
	b, _ := json.Marshal(old)
	back, err := DecodeRoom(b)
	if err != nil || back.Participants != 5 || !slices.Equal(back.Nodes, []RoomNodeCount{{"sfu-1", 4}, {"sfu-2", 1}}) {
		t.Fatalf("round trip %s: %+v, %v", b, back, err)
	}
	if r, err := DecodeRoom([]byte(`{"room":"r1","node":"sfu-1","participants":0,"replace":true}`)); err != nil || len(r.Nodes) != 0 {
		t.Fatalf("an empty re-placed record: %+v, %v", r, err)
	}
	for _, bad := range []string{
		`{"room":"r1","node":"sfu-1","participants":3,"nodes":[{"node":"sfu-1","participants":2}]}`,
		`{"room":"r1","node":"sfu-1","participants":2,"nodes":[{"node":"sfu-2","participants":1},{"node":"sfu-1","participants":1}]}`,
		`{"room":"r1","node":"sfu-1","participants":2,"nodes":[{"node":"sfu-1","participants":1},{"node":"sfu-1","participants":1}]}`,
		`{"room":"r1","node":"sfu-1","participants":0,"nodes":[{"node":"sfu-1","participants":0}]}`,
		`{"room":"r1","node":"sfu-1","participants":1,"nodes":[{"node":"a b","participants":1}]}`,
		`{"room":"r1","node":"sfu-1","participants":-1,"nodes":[{"node":"sfu-1","participants":-1}]}`,
	} {
		if _, err := DecodeRoom([]byte(bad)); !errors.Is(err, ErrBadRecord) {
			t.Errorf("%s: %v, want ErrBadRecord", bad, err)
		}
	}
}
