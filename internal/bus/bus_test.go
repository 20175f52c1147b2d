package bus

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startBus starts an embedded bus and connects a signal server and node
// to it with their credentials.
func startBus(t *testing.T, node string) (*Embedded, *Client, *Client) {
	t.Helper()
	e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	a, err := Connect(Config{URLs: []string{e.URL()}, Name: "signal", Identity: mustIdentity(t, e, RoleSignal, "")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b, err := Connect(Config{URLs: []string{e.URL()}, Name: "sfu", Identity: mustIdentity(t, e, RoleNode, node)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return e, a, b
}

func mustIdentity(t *testing.T, e *Embedded, role Role, node string) *Identity {
	t.Helper()
	id, err := e.NewIdentity(role, node)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestRequestReply(t *testing.T) {
	_, signal, node := startBus(t, "node1")
	sub, err := node.HandleRequests("node1", func(_ context.Context, req Request) (Reply, error) {
		switch req.Type {
		case RequestJoin:
			if !req.Join.Publish {
				return Reply{}, Errorf(StatusUnauthorized, "no publish right")
			}
			return Reply{SDP: "answer to " + req.Join.Offer}, nil
		case RequestLeave:
			return Reply{}, errors.New("boom")
		}
		return Reply{}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	ctx := context.Background()

	rep, err := signal.Request(ctx, "node1", Request{Type: RequestJoin, Session: "s1",
		Join: &Join{Room: "r1", Identity: "alice", Publish: true, Subscribe: true, Offer: "v=0"}})
	if err != nil || rep.SDP != "answer to v=0" || rep.Node != "node1" {
		t.Fatalf("join: %+v %v", rep, err)
	}

	tests := []struct {
		name string
		node string
		req  Request
		want Status
	}{
		{"handler status", "node1", Request{Type: RequestJoin, Session: "s2", Join: &Join{Room: "r1", Identity: "bob", Offer: "v=0"}}, StatusUnauthorized},
		{"plain error is internal", "node1", Request{Type: RequestLeave, Session: "s1"}, StatusInternal},
		{"no such node", "node2", Request{Type: RequestLeave, Session: "s1"}, StatusUnavailable},
		{"invalid request", "node1", Request{Type: "dance", Session: "s1"}, StatusBadRequest},
		{"bad room", "node1", Request{Type: RequestJoin, Session: "s1", Join: &Join{Room: "a.b", Identity: "x", Offer: "v=0"}}, StatusBadRequest},
		{"bad node", "a.*", Request{Type: RequestLeave, Session: "s1"}, StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			_, err := signal.Request(ctx, tt.node, tt.req)
			if got := StatusOf(err); got != tt.want {
				t.Fatalf("status %q (%v), want %q", got, err, tt.want)
			}
			if !errors.Is(err, &Error{Status: tt.want}) {
				t.Fatalf("errors.Is(%v, %s) is false", err, tt.want)
			}
		})
	}
}

func TestRequestsOfOneSessionInOrder(t *testing.T) {
	_, signal, node := startBus(t, "n")
	var mu sync.Mutex
	seen := map[string][]int{}
	sub, err := node.HandleRequests("n", func(_ context.Context, req Request) (Reply, error) {
		mu.Lock()
		seen[req.Session] = append(seen[req.Session], len(req.SDP))
		mu.Unlock()
		return Reply{}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	// Publish without waiting, as a signal server forwarding trickle
	// candidates would, then wait for all replies.
	var wg sync.WaitGroup
	for _, s := range []string{"a", "b", "c"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 1; i <= 20; i++ {
				sdp := make([]byte, i)
				for j := range sdp {
					sdp[j] = 'x'
				}
				if _, err := signal.Request(context.Background(), "n", Request{Type: RequestAnswer, Session: s, SDP: string(sdp)}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	for s, got := range seen {
		for i, n := range got {
			if n != i+1 {
				t.Fatalf("session %s: request %d served as %d: %v", s, n, i+1, got)
			}
		}
	}
}

func TestPubSub(t *testing.T) {
	_, signal, node := startBus(t, "n1")
	events := make(chan RoomEvent, 10)
	msgs := make(chan SessionMessage, 10)
	nodes := make(chan NodeAnnounce, 10)
	sessions := make(chan SessionAnnounce, 10)
	for _, f := range []func() (*Subscription, error){
		func() (*Subscription, error) {
			return signal.SubscribeRoomEvents("*", func(e RoomEvent) { events <- e })
		},
		func() (*Subscription, error) {
			return signal.SubscribeSession("n1", "s1", func(m SessionMessage) { msgs <- m })
		},
		func() (*Subscription, error) { return signal.SubscribeNodes(func(a NodeAnnounce) { nodes <- a }) },
		func() (*Subscription, error) {
			return node.SubscribeSessions(func(a SessionAnnounce) { sessions <- a })
		},
	} {
		if _, err := f(); err != nil {
			t.Fatal(err)
		}
	}
	if err := signal.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	if err := node.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(node.PublishRoomEvent(RoomEvent{Type: EventTrackPublished, Room: "r1", Node: "n1", Identity: "alice",
		Track: &TrackInfo{ID: "t", StreamID: "s", Kind: "video", Layers: []string{"q", "h", "f"}}, Time: now}))
	must(node.PublishSession("n1", SessionMessage{Type: SessionOffer, Session: "s1", SDP: "v=0"}))
	must(node.AnnounceNode(NodeAnnounce{Node: "n1", UDP: "127.0.0.1:7882", Load: NodeLoad{Peers: 3}, Time: now}))
	must(signal.AnnounceSession(SessionAnnounce{Session: "s1", Room: "r1", Node: "n1", Ufrag: "abcd", Time: now}))
	// Bad messages are refused at the sender...
	if err := node.PublishRoomEvent(RoomEvent{Type: EventTrackPublished, Room: "r1", Node: "n1"}); !errors.Is(err, ErrBadMessage) {
		t.Fatalf("track event without track: %v", err)
	}
	// ...and dropped and counted at the receiver.
	must(node.Conn().Publish(SessionSubject("n1", "s1"), []byte(`{"type":"offer"}`)))
	must(node.Conn().Publish(SessionSubject("n1", "s1"), []byte(`not json`)))
	must(node.PublishSession("n1", SessionMessage{Type: SessionClosed, Session: "s1"}))

	timeout := time.After(5 * time.Second)
	select {
	case e := <-events:
		if e.Track == nil || e.Track.Layers[2] != "f" || !e.Time.Equal(now) {
			t.Fatalf("event %+v", e)
		}
	case <-timeout:
		t.Fatal("no room event")
	}
	for _, want := range []SessionMessageType{SessionOffer, SessionClosed} {
		select {
		case m := <-msgs:
			if m.Type != want {
				t.Fatalf("session message %+v, want %s", m, want)
			}
		case <-timeout:
			t.Fatal("no session message")
		}
	}
	if n := signal.BadMessages(); n != 2 {
		t.Fatalf("bad messages %d, want 2", n)
	}
	select {
	case a := <-nodes:
		if a.Load.Peers != 3 {
			t.Fatalf("node %+v", a)
		}
	case <-timeout:
		t.Fatal("no node announce")
	}
	select {
	case a := <-sessions:
		if a.Ufrag != "abcd" {
			t.Fatalf("session %+v", a)
		}
	case <-timeout:
		t.Fatal("no session announce")
	}
}

func TestNodeTable(t *testing.T) {
	var nt NodeTable
	t0 := time.Unix(1000, 0)
	nt.Update(NodeAnnounce{Node: "a", Region: "eu", Load: NodeLoad{Peers: 10}}, t0)
	nt.Update(NodeAnnounce{Node: "b", Region: "us", Load: NodeLoad{Peers: 1}}, t0)
	nt.Update(NodeAnnounce{Node: "c", Region: "eu", Load: NodeLoad{Peers: 5}}, t0.Add(-time.Minute))
	nt.Update(NodeAnnounce{Node: "d", Region: "eu", Draining: true}, t0)
	tests := []struct {
		region string
		want   string
	}{{"eu", "a"}, {"us", "b"}, {"", "b"}, {"ap", "b"}}
	for _, tt := range tests {
		got, ok := nt.Pick(tt.region, t0)
		if !ok || got.Node != tt.want {
			t.Errorf("Pick(%q) = %s, want %s", tt.region, got.Node, tt.want)
		}
	}
	if live := nt.Live(t0); len(live) != 3 {
		t.Fatalf("live %v", live)
	}
	if _, ok := nt.Pick("", t0.Add(time.Hour)); ok {
		t.Fatal("expired nodes picked")
	}
}

func TestValidName(t *testing.T) {
	for s, want := range map[string]bool{"room-1": true, "A_b": true, "": false, "a.b": false, "a b": false,
		"*": false, ">": false, "é": false, string(make([]byte, 65)): false} {
		if ValidName(s) != want {
			t.Errorf("ValidName(%q) != %v", s, want)
		}
	}
}
