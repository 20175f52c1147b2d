package bus

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// A killed node is swept once NodeExpiry has passed since its last
// announcement, once; a node still announcing is not; a swept node that
// announces again is live again.
func TestNodeTableSweep(t *testing.T) {
	var nt NodeTable
	t0 := time.Unix(1000, 0)
	nt.Update(NodeAnnounce{Node: "a"}, t0)
	nt.Update(NodeAnnounce{Node: "b"}, t0)
	if gone := nt.Sweep(t0.Add(NodeExpiry)); len(gone) != 0 {
		t.Fatalf("swept at exactly NodeExpiry: %v", gone)
	}
	nt.Update(NodeAnnounce{Node: "b"}, t0.Add(NodeExpiry))
	at := t0.Add(NodeExpiry + time.Millisecond)
	if live := nt.Live(at); len(live) != 1 || live[0].Node != "b" {
		t.Fatalf("live %v", live)
	}
	if gone := nt.Sweep(at); !slices.Equal(gone, []string{"a"}) {
		t.Fatalf("swept %v, want [a]", gone)
	}
	if gone := nt.Sweep(at); len(gone) != 0 {
		t.Fatalf("swept twice: %v", gone)
	}
	nt.Update(NodeAnnounce{Node: "a"}, at)
	if live := nt.Live(at); len(live) != 2 {
		t.Fatalf("a back: %v", live)
	}
	if NodeExpiry > 2*time.Second || AnnounceInterval*3 > NodeExpiry {
		t.Fatalf("expiry %v, interval %v: death must be declared within 2 s after at least 3 missed announcements", NodeExpiry, AnnounceInterval)
	}
}

func TestFailoverMessagesValidate(t *testing.T) {
	long := make([]string, MaxAnnouncedRooms+1)
	for i := range long {
		long[i] = "r"
	}
	for _, tc := range []struct {
		name string
		v    validator
		ok   bool
	}{
		{"drain", &Request{Type: RequestDrain}, true},
		{"drain period", &Request{Type: RequestDrain, Drain: &DrainRequest{PeriodMillis: 5000}}, true},
		{"drain negative", &Request{Type: RequestDrain, Drain: &DrainRequest{PeriodMillis: -1}}, false},
		{"drain too long", &Request{Type: RequestDrain, Drain: &DrainRequest{PeriodMillis: MaxDrainPeriod.Milliseconds() + 1}}, false},
		{"rejoin drain", &SessionMessage{Type: SessionRejoin, Session: "s", Reason: RejoinDrain}, true},
		{"rejoin failed", &SessionMessage{Type: SessionRejoin, Session: "s", Reason: RejoinNodeFailed}, true},
		{"rejoin no reason", &SessionMessage{Type: SessionRejoin, Session: "s"}, false},
		{"rejoin odd reason", &SessionMessage{Type: SessionRejoin, Session: "s", Reason: "because"}, false},
		{"rooms", &NodeAnnounce{Node: "n", UDP: "1.2.3.4:1", Rooms: []string{"a", "b"}}, true},
		{"bad room", &NodeAnnounce{Node: "n", UDP: "1.2.3.4:1", Rooms: []string{"a.b"}}, false},
		{"too many rooms", &NodeAnnounce{Node: "n", UDP: "1.2.3.4:1", Rooms: long}, false},
	} {
		if err := tc.v.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.name, err)
		} else if err != nil && !errors.Is(err, ErrBadMessage) {
			t.Errorf("%s: error outside ErrBadMessage: %v", tc.name, err)
		}
	}
}

// Forged or malformed failover messages on the wire are dropped and
// counted: a rejoin with a reason nobody defined, an announcement with a
// room that is not a name (both read by signal), a drain with a negative
// period (answered bad-request without reaching the node's handler); and
// another node's credential cannot send a drain at all (the server
// refuses to deliver it).
func TestFailoverBadMessagesDropped(t *testing.T) {
	e, sig, node := startBus(t, "n1")
	got := make(chan SessionMessage, 4)
	sub, err := sig.SubscribeSession("n1", "s1", func(m SessionMessage) { got <- m })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	anns := make(chan NodeAnnounce, 4)
	asub, err := sig.SubscribeNodes(func(a NodeAnnounce) { anns <- a })
	if err != nil {
		t.Fatal(err)
	}
	defer asub.Unsubscribe()
	called := make(chan Request, 4)
	hs, err := node.HandleRequests("n1", func(_ context.Context, r Request) (Reply, error) { called <- r; return Reply{}, nil })
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Unsubscribe()
	nc := node.Conn()
	_ = nc.Publish(SessionSubject("n1", "s1"), []byte(`{"type":"rejoin","session":"s1","reason":"forged"}`))
	_ = nc.Publish(NodeAnnounceSubject("n1"), []byte(`{"node":"n1","udp":"1.2.3.4:1","rooms":["x y"]}`))
	_ = nc.Flush()
	m, err := sig.Conn().Request(NodeRPCSubject("n1"), []byte(`{"type":"drain","drain":{"period_ms":-5}}`), 2*time.Second)
	if err != nil || !strings.Contains(string(m.Data), "bad_request") {
		t.Fatalf("malformed drain: %v %v", err, m)
	}
	other, err := Connect(Config{URLs: []string{e.URL()}, Identity: mustIdentity(t, e, RoleNode, "n2")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	if _, err := other.Request(ctx, "n1", Request{Type: RequestDrain}); err == nil {
		t.Fatal("node n2 drained node n1")
	}
	cancel()
	if _, err := sig.Request(context.Background(), "n1", Request{Type: RequestDrain, Drain: &DrainRequest{PeriodMillis: 1000}}); err != nil {
		t.Fatalf("valid drain: %v", err)
	}
	if r := <-called; r.Type != RequestDrain || r.Drain.PeriodMillis != 1000 {
		t.Fatalf("handler got %+v", r)
	}
	_ = nc.Publish(SessionSubject("n1", "s1"), []byte(`{"type":"rejoin","session":"s1","reason":"drain"}`))
	select {
	case m := <-got:
		if m.Type != SessionRejoin || m.Reason != RejoinDrain {
			t.Fatalf("got %+v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("valid rejoin not delivered")
	}
	select {
	case r := <-called:
		t.Fatalf("a refused drain reached the handler: %+v", r)
	case a := <-anns:
		t.Fatalf("malformed announcement delivered: %+v", a)
	default:
	}
	if n := sig.BadMessages(); n != 2 {
		t.Errorf("signal counted %d bad messages, want 2 (rejoin, announcement)", n)
	}
	if n := node.BadMessages(); n != 1 {
		t.Errorf("node counted %d bad messages, want 1 (drain)", n)
	}
}
