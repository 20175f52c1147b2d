package signal

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/bus/bustest"
	"github.com/traverse-rtc/traverse/internal/metricstest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// joinOn joins with tok and offers, and returns the node of the joined
// message (skipping the room's participant and track messages).
func (c *testClient) joinOn(tok string) string {
	c.t.Helper()
	c.send(map[string]string{"type": "join", "token": tok})
	var node string
	for node == "" {
		m := c.recv()
		switch m.Type {
		case TypeJoined:
			node = m.Node
		case TypeError:
			c.t.Fatalf("join: %+v", m)
		}
	}
	c.send(map[string]string{"type": "offer", "sdp": browserOffer})
	for {
		if m := c.recv(); m.Type == TypeAnswer {
			return node
		} else if m.Type == TypeError {
			c.t.Fatalf("offer: %+v", m)
		}
	}
}

// quiet checks that nothing but the pong of a ping is waiting for c.
func (c *testClient) quiet() {
	c.t.Helper()
	c.send(map[string]string{"type": "ping"})
	if m := c.recv(); m.Type != TypePong {
		c.t.Fatalf("unaffected client got %+v", m)
	}
}

func (b *fakeBackend) setNodes(n []Node) { b.mu.Lock(); b.nodes = n; b.mu.Unlock() }

// NodeDown: the sessions on the dead node, and only they, get the rejoin
// message in its exact shape; they join again on the same WebSocket with
// the same token; the first rejoiner of the room picks a live node (never
// the dead one, though it is still listed) and the second follows it even
// when another node has become less loaded; a client whose node drains
// gets rejoin drain from its node's event, and an event naming another
// node than the session's does nothing.
func TestNodeDownRejoin(t *testing.T) {
	s, be, hs, reg := newTestServer(t, nil)
	be.setNodes([]Node{{ID: "n1"}, {ID: "n2", Load: 0.1}, {ID: "n3", Load: 0.2, Rooms: []string{"q"}}})
	claims := func(room, id string) Claims {
		return Claims{Room: room, Identity: id, Publish: true, Subscribe: true}
	}
	ta, tb, tc := token(t, claims("r", "a")), token(t, claims("r", "b")), token(t, claims("q", "c"))
	a, b, c := dial(t, hs.URL), dial(t, hs.URL), dial(t, hs.URL)
	if n := a.joinOn(ta); n != "n1" {
		t.Fatalf("a on %s", n)
	}
	if n := b.joinOn(tb); n != "n1" {
		t.Fatalf("b on %s, not with its room", n)
	}
	if n := c.joinOn(tc); n != "n3" {
		t.Fatalf("c on %s, not where node n3 says its room q lives", n)
	}

	s.NodeDown("n1", RejoinNodeFailed)
	for _, cl := range []*testClient{a, b} {
		if raw := cl.recvRaw(); raw != `{"type":"rejoin","reason":"node_failed"}` {
			t.Fatalf("rejoin message %s", raw)
		}
	}
	c.quiet()
	if n := a.joinOn(ta); n != "n2" {
		t.Fatalf("a rejoined on %s, want n2 (n1 is dead)", n)
	}
	be.setNodes([]Node{{ID: "n1"}, {ID: "n2", Load: 0.1}, {ID: "n3", Rooms: []string{"q"}}})
	if n := b.joinOn(tb); n != "n2" {
		t.Fatalf("b rejoined on %s, not with its room on n2", n)
	}
	if v := metricstest.Value(t, reg, "traverse_signal_rejoins_total", "reason", RejoinNodeFailed); v != 2 {
		t.Errorf("rejoins %v", v)
	}
	// The room API counts each participant once, on its new node.
	s.reg.mu.Lock()
	var onNodes []string
	for _, m := range s.reg.rooms["r"].members {
		onNodes = append(onNodes, m.identity+"@"+m.node.ID)
	}
	s.reg.mu.Unlock()
	if sort.Strings(onNodes); strings.Join(onNodes, " ") != "a@n2 b@n2" {
		t.Errorf("room API's registry after the rejoin: %v, want a@n2 b@n2", onNodes)
	}
	if v := metricstest.Value(t, reg, "traverse_signal_nodes_down_total"); v != 1 {
		t.Errorf("nodes down %v", v)
	}
	// The sessions left the dead node: both old links closed.
	testkit.WaitFor(t, 5*time.Second, "old links closed", func() bool {
		be.mu.Lock()
		defer be.mu.Unlock()
		return be.closed == 2
	})

	// Drain: the node's event for a's session (the sink of a's latest
	// join, the fifth) with a's node asks a to move; one naming another
	// node is ignored.
	be.mu.Lock()
	sinkA := be.sinks[3]
	be.mu.Unlock()
	sinkA(NodeEvent{Kind: NodeRejoin, Node: "n9", Reason: RejoinDrain})
	a.quiet()
	sinkA(NodeEvent{Kind: NodeRejoin, Node: "n2", Reason: RejoinDrain})
	if raw := a.recvRaw(); raw != `{"type":"rejoin","reason":"drain"}` {
		t.Fatalf("drain rejoin message %s", raw)
	}
	be.setNodes([]Node{{ID: "n2", Load: 1}, {ID: "n3", Rooms: []string{"q"}}})
	if n := a.joinOn(ta); n != "n3" {
		t.Fatalf("a moved to %s, want n3 (n2 drains: full)", n)
	}
	b.quiet()
	// A second join without a rejoin is still refused.
	a.send(map[string]string{"type": "join", "token": ta})
	if m := a.recv(); m.Type != TypeError || !strings.Contains(m.Message, "already joined") {
		t.Fatalf("join while joined: %+v", m)
	}
}

// The bus backend declares a node dead within bus.NodeExpiry (plus one
// sweep) of its last announcement, calls OnNodeDown once, carries the
// rooms a node announces, and forgets the dead node's participants.
func TestBusBackendNodeDown(t *testing.T) {
	emb := bustest.Start(t)
	connect := func(role bus.Role, node string) *bus.Client { return bustest.Connect(t, emb, role, node) }
	n1, n2, sig := connect(bus.RoleNode, "n1"), connect(bus.RoleNode, "n2"), connect(bus.RoleSignal, "")
	be := busBackend(t, sig, 0)
	var mu sync.Mutex
	var downs []string
	downAt := make(chan time.Time, 4)
	be.OnNodeDown(func(node, reason string) {
		mu.Lock()
		downs = append(downs, node+"/"+reason)
		mu.Unlock()
		downAt <- time.Now()
	})
	announce := func(c *bus.Client, node string) {
		if err := c.AnnounceNode(bus.NodeAnnounce{Node: node, UDP: "127.0.0.1:7882", Rooms: []string{"r1"}, Time: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	announce(n1, "n1")
	announce(n2, "n2")
	testkit.WaitFor(t, 5*time.Second, "both nodes", func() bool { return len(be.Nodes()) == 2 })
	if ns := be.Nodes(); len(ns[0].Rooms) != 1 || ns[0].Rooms[0] != "r1" {
		t.Fatalf("rooms not carried: %+v", ns)
	}
	// A participant on n1 of room r1, as its events told this server.
	if err := be.addSink("r1", "s-other", func(NodeEvent) {}); err != nil {
		t.Fatal(err)
	}
	if err := n1.PublishRoomEvent(bus.RoomEvent{Type: bus.EventParticipantJoined, Room: "r1", Node: "n1", Session: "p1", Identity: "x"}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "participant recorded", func() bool { return len(be.snapshot("r1", "")) == 1 })

	// n2 keeps announcing; n1 goes silent after one last announcement.
	announce(n1, "n1")
	silent := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(bus.AnnounceInterval)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				announce(n2, "n2")
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	select {
	case at := <-downAt:
		if d := at.Sub(silent); d < bus.NodeExpiry-50*time.Millisecond || d > bus.NodeExpiry+time.Second {
			t.Errorf("n1 declared dead %v after its last announcement, want %v to %v", d, bus.NodeExpiry, bus.NodeExpiry+time.Second)
		}
	case <-time.After(bus.NodeExpiry + 5*time.Second):
		t.Fatal("n1 never declared dead")
	}
	if len(be.snapshot("r1", "")) != 0 {
		t.Error("the dead node's participant is still in the room's snapshot")
	}
	// One more expiry: n2, still announcing, is not declared dead, nor n1 twice.
	if testkit.Eventually(bus.NodeExpiry+500*time.Millisecond, func() bool { mu.Lock(); defer mu.Unlock(); return len(downs) > 1 }) {
		t.Errorf("downs %v", downs)
	}
	mu.Lock()
	if len(downs) != 1 || !strings.HasPrefix(downs[0], "n1/"+RejoinNodeFailed) {
		t.Errorf("downs %v", downs)
	}
	mu.Unlock()

	// The leading controller declares n2 dead (it may see what this
	// server does not): the server acts at once, while n2 still announces.
	// Its "draining" verdict is left to the node's own drain.
	ctl := connect(bus.RoleController, "")
	// One publisher's messages arrive in order: were "draining" acted on,
	// n3's entry would come second.
	for _, d := range []bus.NodeDown{{Node: "n3", Reason: bus.NodeDownDraining}, {Node: "n2", Reason: bus.NodeDownDead}} {
		d.Controller, d.Lease, d.Time = "ctl-a", 1, time.Now()
		if err := ctl.PublishNodeDown(d); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-downAt:
	case <-time.After(5 * time.Second):
		t.Fatal("the controller's NodeDown for n2 was not acted on")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(downs) != 2 || downs[1] != "n2/"+RejoinNodeFailed {
		t.Errorf("downs after the controller's verdicts %v, want n1 then n2 once (dead, not draining)", downs)
	}
}

// TestBusBackendBurstPlacement: a burst of joins between two announcements
// spreads over the nodes: each join this server sends counts toward its
// node's load until the node's own announcements include it.
func TestBusBackendBurstPlacement(t *testing.T) {
	emb, err := bus.StartEmbedded(bus.EmbeddedConfig{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = emb.Close() })
	id, err := emb.NewIdentity(bus.RoleSignal, "")
	if err != nil {
		t.Fatal(err)
	}
	sig, err := bus.Connect(bus.Config{URLs: []string{emb.URL()}, Identity: id}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sig.Close() })
	be := busBackend(t, sig, 100)
	now := time.Now()
	be.now = func() time.Time { return now }
	for _, n := range []string{"n1", "n2", "n3"} {
		be.table.Update(bus.NodeAnnounce{Node: n, UDP: "127.0.0.1:7882", Time: now}, now)
	}
	p := newPlacer(nil, "", nil)
	count := map[string]int{}
	for i := range 40 {
		n, err := p.choose(be.Nodes(), fmt.Sprintf("room%d", i), "", netip.Addr{})
		if err != nil {
			t.Fatal(err)
		}
		be.notePlaced(n.ID, now)
		count[n.ID]++
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		if c := count[n]; c < 13 || c > 14 {
			t.Errorf("a burst of 40 joins placed %v, want 13-14 on each of 3 idle nodes", count)
			break
		}
	}
	// Once the window has passed, only the announced load counts.
	now = now.Add(placedWindow + time.Millisecond)
	for _, n := range be.Nodes() {
		if n.Load != 0 {
			t.Errorf("node %s load %v after the window, want 0 (announced idle)", n.ID, n.Load)
		}
	}
}
