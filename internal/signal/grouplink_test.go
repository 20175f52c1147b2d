package signal

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/bus/bustest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// groupNode is a fake SFU node of a balanced group that records what it
// is asked.
type groupNode struct {
	c    *bus.Client
	fail bool // refuse joins

	mu   sync.Mutex
	reqs []bus.Request
}

func (n *groupNode) handle(_ context.Context, r bus.Request) (bus.Reply, error) {
	n.mu.Lock()
	n.reqs = append(n.reqs, r)
	n.mu.Unlock()
	if r.Type == bus.RequestJoin {
		if n.fail {
			return bus.Reply{}, bus.Errorf(bus.StatusUnavailable, "full")
		}
		return bus.Reply{SDP: "v=0 answer ufrag " + r.Join.ICE.Ufrag}, nil
	}
	return bus.Reply{}, nil
}

// got returns how many requests of type typ the node received.
func (n *groupNode) got(typ bus.RequestType) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := 0
	for _, r := range n.reqs {
		if r.Type == typ {
			k++
		}
	}
	return k
}

func (n *groupNode) joins() []bus.Request {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []bus.Request
	for _, r := range n.reqs {
		if r.Type == bus.RequestJoin {
			out = append(out, r)
		}
	}
	return out
}

// TestGroupClaims mounts the attacks on a balanced group's claims. A
// session placed on node a of group g is offered to a, b and c with one set
// of ICE credentials (c refuses it). Then:
//   - a relay-role connection (not an SFU) and node c publish a claim in
//     a's name on a's subject: the bus refuses both (permissions), a does
//     not win;
//   - c, which the session was not offered to, claims on its own subject:
//     refused and counted;
//   - b claims first and wins (RequestClaimed; a gets RequestLeave);
//   - a's later claim is refused and counted, and a is told to leave again;
//   - the session's requests go to b from then on.
func TestGroupClaims(t *testing.T) {
	emb := bustest.Start(t)
	nodes := map[string]*groupNode{}
	for _, id := range []string{"a", "b", "c"} {
		n := &groupNode{c: bustest.Connect(t, emb, bus.RoleNode, id), fail: id == "c"}
		if _, err := n.c.HandleRequests(id, n.handle); err != nil {
			t.Fatal(err)
		}
		nodes[id] = n
	}
	be, err := NewBusBackend(bustest.Connect(t, emb, bus.RoleSignal, ""), 10)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Close() })
	testkit.WaitFor(t, 5*time.Second, "the group's nodes announced", func() bool {
		for id, n := range nodes {
			_ = n.c.AnnounceNode(bus.NodeAnnounce{Node: id, UDP: "203.0.113.7:7882", Group: "g", Time: time.Now()})
		}
		return len(be.Nodes()) == 3
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var moved []string
	var mmu sync.Mutex
	l, err := be.Join(ctx, Node{ID: "a", Group: "g"}, JoinRequest{Session: "s1", Room: "r1", Identity: "alice", Subscribe: true},
		func(ev NodeEvent) {
			if ev.Kind == NodeMoved {
				mmu.Lock()
				moved = append(moved, ev.Node)
				mmu.Unlock()
			}
		})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	answer, err := l.Offer(ctx, "v=0 offer", "cli")
	if err != nil {
		t.Fatal(err)
	}
	ja, jb := nodes["a"].joins(), nodes["b"].joins()
	if len(ja) != 1 || len(jb) != 1 || len(nodes["c"].joins()) != 1 || *ja[0].Join.ICE != *jb[0].Join.ICE ||
		answer != "v=0 answer ufrag "+ja[0].Join.ICE.Ufrag {
		t.Fatalf("joins: a %+v b %+v; answer %q", ja, jb, answer)
	}

	claim, _ := json.Marshal(bus.SessionMessage{Type: bus.SessionClaim, Session: "s1"})
	rogue := bustest.Connect(t, emb, bus.RoleRelay, "rogue")
	for _, c := range []*bus.Client{rogue, nodes["c"].c} {
		_ = c.Conn().Publish(bus.SessionSubject("a", "s1"), claim)
		_ = c.Conn().Flush()
	}
	testkit.WaitFor(t, 5*time.Second, "the bus refusing both forged claims", func() bool {
		return rogue.Refused() > 0 && nodes["c"].c.Refused() > 0
	})
	// c claims on its own subject: it was not offered the session.
	if err := nodes["c"].c.PublishSession("c", bus.SessionMessage{Type: bus.SessionClaim, Session: "s1"}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "c's claim refused", func() bool { return be.RefusedClaims() == 1 })
	if err := nodes["b"].c.PublishSession("b", bus.SessionMessage{Type: bus.SessionClaim, Session: "s1"}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "b confirmed, a told to leave", func() bool {
		return nodes["b"].got(bus.RequestClaimed) == 1 && nodes["a"].got(bus.RequestLeave) == 1
	})
	if nodes["a"].got(bus.RequestClaimed) != 0 {
		t.Fatal("a forged claim in a's name won the session")
	}
	if err := nodes["a"].c.PublishSession("a", bus.SessionMessage{Type: bus.SessionClaim, Session: "s1"}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "a's late claim refused", func() bool {
		return be.RefusedClaims() == 2 && nodes["a"].got(bus.RequestLeave) == 2
	})
	if nodes["a"].got(bus.RequestClaimed) != 0 || nodes["b"].got(bus.RequestClaimed) != 1 {
		t.Fatal("a second node claimed the session")
	}
	mmu.Lock()
	if len(moved) != 1 || moved[0] != "b" {
		t.Fatalf("the session was told it moved to %v, want [b]", moved)
	}
	mmu.Unlock()
	if err := l.Answer(ctx, "v=0 client answer"); err != nil {
		t.Fatal(err)
	}
	if nodes["b"].got(bus.RequestAnswer) != 1 || nodes["a"].got(bus.RequestAnswer) != 0 {
		t.Fatal("the session's requests do not go to the winner")
	}
}

// A balanced group's session that another node than the placed one won
// (NodeMoved) rejoins when the winner dies, and not when the placed node
// does.
func TestGroupSessionFollowsItsWinner(t *testing.T) {
	s, be, hs, _ := newTestServer(t, nil)
	be.setNodes([]Node{{ID: "n1", Group: "g"}, {ID: "n2", Group: "g", Load: 0.5}})
	tok := token(t, Claims{Room: "r", Identity: "a", Publish: true, Subscribe: true})
	a := dial(t, hs.URL)
	if n := a.joinOn(tok); n != "n1" {
		t.Fatalf("a placed on %s", n)
	}
	be.mu.Lock()
	sink := be.sinks[0]
	be.mu.Unlock()
	sink(NodeEvent{Kind: NodeMoved, Node: "n2"})
	testkit.WaitFor(t, 5*time.Second, "the registry naming the winner", func() bool {
		return len(s.reg.sessionsOn("n2")) == 1
	})
	s.NodeDown("n1", RejoinNodeFailed)
	a.quiet()
	s.NodeDown("n2", RejoinNodeFailed)
	if raw := a.recvRaw(); raw != `{"type":"rejoin","reason":"node_failed"}` {
		t.Fatalf("rejoin message %s", raw)
	}
}
