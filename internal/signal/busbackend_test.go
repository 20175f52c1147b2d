package signal

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/bus/bustest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// nodeAnswer is an SFU node's answer to browserOffer: one host candidate.
var nodeAnswer = strings.Replace(browserOffer, "a=mid:0\r\n", "a=mid:0\r\na=candidate:1 1 udp 2130706431 10.0.0.5 7882 typ host\r\n", 1)

// nodeAndSignal starts an embedded bus and connects node n1 and a signal
// server to it.
func nodeAndSignal(t *testing.T) (nodeBus, sigBus *bus.Client) {
	emb := bustest.Start(t)
	return bustest.Connect(t, emb, bus.RoleNode, "n1"), bustest.Connect(t, emb, bus.RoleSignal, "")
}

// busBackend is NewBusBackend(sig, capacity), closed when the test ends.
func busBackend(t *testing.T, sig *bus.Client, capacity int) *BusBackend {
	t.Helper()
	be, err := NewBusBackend(sig, capacity)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Close() })
	return be
}

// TestBusBackend runs signal's Server over a real embedded NATS bus against
// a scripted node: join, renegotiation from the node, room events, leave.
func TestBusBackend(t *testing.T) {
	nodeBus, sigBus := nodeAndSignal(t)

	var mu sync.Mutex
	var got []bus.Request
	var announces []bus.SessionAnnounce
	if _, err := nodeBus.HandleRequests("n1", func(_ context.Context, r bus.Request) (bus.Reply, error) {
		mu.Lock()
		got = append(got, r)
		mu.Unlock()
		switch r.Type {
		case bus.RequestJoin:
			if !r.Join.Publish || r.Join.Room != "r1" {
				return bus.Reply{}, bus.Errorf(bus.StatusBadRequest, "unexpected join %+v", r.Join)
			}
			return bus.Reply{SDP: nodeAnswer}, nil
		case bus.RequestOffer:
			return bus.Reply{}, bus.Errorf(bus.StatusBadRequest, "no renegotiation here")
		case bus.RequestLayer:
			if r.Layer.Track == "nosuch" {
				return bus.Reply{}, bus.Errorf(bus.StatusNotFound, "no track nosuch")
			}
		}
		return bus.Reply{}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := nodeBus.SubscribeSessions(func(a bus.SessionAnnounce) {
		mu.Lock()
		announces = append(announces, a)
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	be := busBackend(t, sigBus, 10)
	_ = nodeBus.Conn().Flush()
	testkit.WaitFor(t, 5*time.Second, "the node announced", func() bool {
		_ = nodeBus.AnnounceNode(bus.NodeAnnounce{Node: "n1", Region: "eu", UDP: "203.0.113.7:7882", Load: bus.NodeLoad{Peers: 3}, Time: time.Now()})
		return len(be.Nodes()) == 1
	})
	if n := be.Nodes()[0]; n.Public.String() != "203.0.113.7" || n.Load != 0.3 || n.Region != "eu" {
		t.Fatalf("node %+v", n)
	}

	_, _, hs, _ := newTestServer(t, func(c *Config) { c.Backend = be })
	c := dial(t, hs.URL)
	c.send(map[string]any{"type": "join", "token": token(t, Claims{Room: "r1", Identity: "alice", Publish: true, Subscribe: true})})
	joined := c.recv()
	if joined.Type != TypeJoined || joined.Node != "n1" {
		t.Fatalf("%+v", joined)
	}
	c.send(map[string]any{"type": "offer", "sdp": browserOffer})
	if m := c.recv(); m.Type != TypeAnswer || !strings.Contains(m.SDP, "203.0.113.7 7882 typ host") {
		t.Fatalf("answer %+v", m)
	}
	c.send(map[string]any{"type": "candidate", "candidate": map[string]any{"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host", "sdpMid": "0", "usernameFragment": "q7bK"}})
	c.send(map[string]any{"type": "offer", "sdp": browserOffer})
	if m := c.recv(); m.Type != TypeError || m.Class != ClassBadRequest || m.Fatal {
		t.Fatalf("refused renegotiation: %+v", m)
	}
	// The node renegotiates, and the room hears of another participant.
	sid := joined.ParticipantID
	if err := nodeBus.PublishSession("n1", bus.SessionMessage{Type: bus.SessionOffer, Session: sid, SDP: browserOffer}); err != nil {
		t.Fatal(err)
	}
	if m := c.recv(); m.Type != TypeOffer {
		t.Fatalf("node offer %+v", m)
	}
	c.send(map[string]any{"type": "answer", "sdp": strings.ReplaceAll(browserOffer, "a=setup:actpass", "a=setup:active")})
	// The client shows bob's video small, then asks for a track the node
	// does not send it.
	c.send(map[string]any{"type": "layer", "track": "v1", "streamId": "st", "width": 320, "height": 180})
	c.send(map[string]any{"type": "layer", "track": "nosuch", "maxLayer": 0})
	if m := c.recv(); m.Type != TypeError || m.Class != ClassBadRequest || m.Fatal {
		t.Fatalf("refused layer: %+v", m)
	}
	for _, e := range []bus.RoomEvent{
		{Type: bus.EventParticipantJoined, Room: "r1", Session: sid, Identity: "alice"}, // self: not relayed
		{Type: bus.EventParticipantJoined, Room: "r1", Session: "s2", Identity: "bob"},
		{Type: bus.EventTrackPublished, Room: "r1", Session: "s2", Identity: "bob", Track: &bus.TrackInfo{ID: "v1", StreamID: "st", Kind: "video"}},
		{Type: bus.EventActiveSpeaker, Room: "r1", Speakers: []bus.Speaker{{Session: "s2", Identity: "bob", Level: 80}}},
	} {
		e.Time, e.Node = time.Now(), "n1"
		if err := nodeBus.PublishRoomEvent(e); err != nil {
			t.Fatal(err)
		}
	}
	if m := c.recv(); m.Type != TypeParticipant || m.Participant.Identity != "bob" || m.Event != EventJoined {
		t.Fatalf("participant %+v", m)
	}
	if m := c.recv(); m.Type != TypeTrack || m.Track.StreamID != "st" {
		t.Fatalf("track %+v", m)
	}
	if m := c.recv(); m.Type != TypeSpeakers || m.Speakers[0].ID != "s2" || m.Speakers[0].Level != 80 {
		t.Fatalf("speakers %+v", m)
	}
	// A second client of the room learns of bob and his track on joining.
	c2 := dial(t, hs.URL)
	c2.send(map[string]any{"type": "join", "token": token(t, Claims{Room: "r1", Identity: "carol", Subscribe: true})})
	if m := c2.recv(); m.Type != TypeJoined {
		t.Fatalf("%+v", m)
	}
	seen := map[string]bool{}
	for range 3 {
		m := c2.recv()
		seen[m.Type+":"+m.Participant.Identity] = true
	}
	if !seen["participant:bob"] || !seen["track:bob"] || !seen["participant:alice"] {
		t.Fatalf("snapshot: %v", seen)
	}
	c.send(map[string]any{"type": "leave"})
	if m := c.recv(); m.Type != TypeBye {
		t.Fatalf("bye %+v", m)
	}
	testkit.WaitFor(t, 5*time.Second, "the leave and both announces", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) > 0 && got[len(got)-1].Type == bus.RequestLeave && len(announces) == 2
	})
	mu.Lock()
	defer mu.Unlock()
	var types []string
	for _, r := range got {
		types = append(types, string(r.Type))
	}
	if strings.Join(types, ",") != "join,candidate,offer,answer,layer,layer,leave" {
		t.Fatalf("node saw %v", types)
	}
	if l := got[4].Layer; l == nil || *l != (bus.LayerRequest{Track: "v1", StreamID: "st", Width: 320, Height: 180}) {
		t.Fatalf("layer request %+v", l)
	}
	if announces[0].Ufrag != "q7bK" || announces[0].Session != sid || !announces[1].Gone {
		t.Fatalf("announces %+v", announces)
	}
	if got[1].Candidate == nil || *got[1].Candidate.UsernameFragment != "q7bK" {
		t.Fatalf("candidate %+v", got[1].Candidate)
	}
}
