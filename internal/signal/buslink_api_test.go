package signal

import (
	"context"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestRoomAPIOverTheBus: over the real bus backend, the room listing
// carries each participant's path and bit rates as its node tells them
// (RequestStats), and the room API's mute is a RequestMute to the
// publisher's node (which stops forwarding: internal/sfu TestMuteTrack),
// and only then a mute message to the client.
func TestRoomAPIOverTheBus(t *testing.T) {
	nodeBus, sigBus := nodeAndSignal(t)
	var mu sync.Mutex
	var mutes []bus.Request
	if _, err := nodeBus.HandleRequests("n1", func(_ context.Context, r bus.Request) (bus.Reply, error) {
		switch r.Type {
		case bus.RequestJoin:
			return bus.Reply{SDP: nodeAnswer}, nil
		case bus.RequestStats:
			return bus.Reply{Stats: &bus.SessionStats{Path: "relay", Remote: "198.51.100.9:50000", BitrateIn: 1_500_000, BitrateOut: 900_000}}, nil
		case bus.RequestMute:
			mu.Lock()
			mutes = append(mutes, r)
			mu.Unlock()
		}
		return bus.Reply{}, nil
	}); err != nil {
		t.Fatal(err)
	}
	be := busBackend(t, sigBus, 10)
	testkit.WaitFor(t, 5*time.Second, "the node announced", func() bool {
		_ = nodeBus.AnnounceNode(bus.NodeAnnounce{Node: "n1", UDP: "203.0.113.7:7882", Time: time.Now()})
		return len(be.Nodes()) == 1
	})
	s, err := New(Config{Key: testKey, Backend: be, API: APIConfig{AdminToken: testAdmin}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(func() { hs.Close(); _ = s.Close() })

	alice, am := joinAs(t, hs.URL, "r1", "alice")
	alice.send(map[string]any{"type": "offer", "sdp": browserOffer})
	if m := alice.recv(); m.Type != TypeAnswer {
		t.Fatalf("answer: %+v", m)
	}
	code, v := apiClient{t, hs.URL}.do("GET", "/v1/rooms/r1", testAdmin, "")
	if p := v["participants"].([]any)[0].(map[string]any); code != 200 || p["path"] != "relay" || p["bitrateIn"] != 1.5e6 ||
		p["bitrateOut"] != 9e5 || p["remote"] != "198.51.100.9:50000" {
		t.Fatalf("room: %d %v", code, v)
	}
	code, v = apiClient{t, hs.URL}.do("POST", "/v1/rooms/r1/participants/"+am.ParticipantID+"/mute", testAdmin, `{"track":"*","muted":true}`)
	if code != 200 || v["enforced"] != true {
		t.Fatalf("mute: %d %v", code, v)
	}
	mu.Lock()
	if len(mutes) != 1 || mutes[0].Session != am.ParticipantID || mutes[0].Mute.Track != "*" || !mutes[0].Mute.Muted {
		t.Fatalf("node got %+v", mutes)
	}
	mu.Unlock()
	if m := alice.recv(); m.Type != TypeMute || m.Muted == nil || !*m.Muted {
		t.Fatalf("alice: %+v", m)
	}
}
