package signal

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/traverse-rtc/traverse/internal/metricstest"
)

// joinP2P joins identity to room and returns the client and its joined
// message, after checking joined says the room is peer to peer.
func joinP2P(t *testing.T, url, room, identity string, publish bool) (*testClient, ServerMessage) {
	t.Helper()
	c := dial(t, url)
	c.send(map[string]any{"type": "join", "token": token(t, Claims{Room: room, Identity: identity, Publish: publish, Subscribe: true})})
	m := c.recv()
	if m.Type != TypeJoined || m.Mode != ModeP2P || len(m.ICEServers) == 0 {
		t.Fatalf("%s joined: %+v", identity, m)
	}
	return c, m
}

func wantMode(t *testing.T, c *testClient, who, mode, peer string, initiator bool) {
	t.Helper()
	m := c.recv()
	if m.Type != TypeMode || m.Mode != mode || (peer == "") != (m.Peer == nil) ||
		m.Peer != nil && m.Peer.Identity != peer || m.Initiator != initiator {
		t.Fatalf("%s: %+v (peer %+v), want mode %s peer %q initiator %v", who, m, m.Peer, mode, peer, initiator)
	}
}

// drainClose reads c until the server's close, answering it (the server's
// close handshake waits for the reply).
func drainClose(c *testClient) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		if _, _, err := c.conn.Read(ctx); err != nil {
			return
		}
	}
}

func wantError(t *testing.T, c *testClient, who, class, text string) {
	t.Helper()
	m := c.recv()
	if m.Type != TypeError || m.Class != class || m.Fatal || !strings.Contains(m.Message, text) {
		t.Fatalf("%s: %+v, want a non-fatal %s error with %q", who, m, class, text)
	}
}

// TestP2PRoom: the modes of a peer-to-peer room as members come and go,
// and who may reach whom: only the two members of a room in P2P mode, the
// room and sender taken from the session, never from the message.
func TestP2PRoom(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	s, be, hs, reg := newTestServer(t, func(c *Config) { c.P2P = true })
	alice, aj := joinP2P(t, hs.URL, "r", "alice", true)
	wantMode(t, alice, "alice", ModeP2P, "", false)
	bob, bj := joinP2P(t, hs.URL, "r", "bob", true)
	wantMode(t, bob, "bob", ModeP2P, "alice", false)
	wantMode(t, alice, "alice", ModeP2P, "bob", true)

	// Another room's member reaches nobody, whatever it names.
	mallory, _ := joinP2P(t, hs.URL, "other", "mallory", true)
	wantMode(t, mallory, "mallory", ModeP2P, "", false)
	mallory.send(map[string]any{"type": TypeP2POffer, "sdp": browserOffer, "to": aj.ParticipantID, "room": "r"})
	wantError(t, mallory, "mallory", ClassBadRequest, "not peer to peer")

	// The two reach each other, marked with the sender's id.
	alice.send(map[string]any{"type": TypeP2POffer, "sdp": browserOffer})
	if m := bob.recv(); m.Type != TypeP2POffer || m.From != aj.ParticipantID || m.SDP != browserOffer {
		t.Fatalf("bob got %+v", m)
	}
	bob.send(map[string]any{"type": TypeP2PCandidate, "candidate": map[string]any{"candidate": "candidate:1 1 udp 2130706431 192.0.2.1 5000 typ srflx raddr 10.0.0.1 rport 5000", "sdpMid": "0"}})
	if m := alice.recv(); m.Type != TypeP2PCandidate || m.From != bj.ParticipantID || !strings.Contains(m.Candidate.Candidate, "192.0.2.1") {
		t.Fatalf("alice got %+v", m)
	}
	// Oversized and malformed: refused at decoding, the session lives.
	alice.send(map[string]any{"type": TypeP2POffer, "sdp": strings.Repeat("a", maxSDPLen+1)})
	wantError(t, alice, "alice", ClassBadRequest, "sdp")
	alice.send(map[string]any{"type": TypeP2PCandidate, "candidate": map[string]any{"candidate": "candidate:x"}})
	wantError(t, alice, "alice", ClassBadRequest, "")

	// A third: everyone into the SFU; P2P messages are refused now.
	carol, _ := joinP2P(t, hs.URL, "r", "carol", true)
	wantMode(t, carol, "carol", ModeSFU, "", false)
	wantMode(t, alice, "alice", ModeSFU, "", false)
	wantMode(t, bob, "bob", ModeSFU, "", false)
	alice.send(map[string]any{"type": TypeP2POffer, "sdp": browserOffer})
	wantError(t, alice, "alice", ClassBadRequest, "not peer to peer")
	// The SFU path works as ever.
	alice.send(map[string]any{"type": "offer", "sdp": browserOffer})
	if m := alice.recv(); m.Type != TypeAnswer {
		t.Fatalf("alice's SFU offer: %+v", m)
	}

	// The third leaves: back to P2P, same initiator.
	carol.send(map[string]any{"type": "leave"})
	if m := carol.recv(); m.Type != TypeBye {
		t.Fatalf("carol: %+v", m)
	}
	drainClose(carol)
	wantMode(t, alice, "alice", ModeP2P, "bob", true)
	wantMode(t, bob, "bob", ModeP2P, "alice", false)

	// sfu-release: alice's session on the node ends and a fresh link is
	// joined under the same participant id.
	be.mu.Lock()
	joins, closed := len(be.joins), be.closed
	be.mu.Unlock()
	alice.send(map[string]any{"type": TypeSFURelease})
	alice.send(map[string]any{"type": "ping"})
	if m := alice.recv(); m.Type != TypePong {
		t.Fatalf("alice after sfu-release: %+v", m)
	}
	be.mu.Lock()
	if len(be.joins) != joins+1 || be.closed != closed+1 || be.joins[len(be.joins)-1].Session != aj.ParticipantID {
		t.Fatalf("sfu-release: joins %d -> %d, closed %d -> %d, %+v", joins, len(be.joins), closed, be.closed, be.joins[len(be.joins)-1])
	}
	be.mu.Unlock()

	// Bob leaves: alice is alone.
	bob.send(map[string]any{"type": "leave"})
	bob.recv()
	drainClose(bob)
	wantMode(t, alice, "alice", ModeP2P, "", false)

	for name, want := range map[string]float64{"p2p-offer": 1, "p2p-candidate": 1} {
		if v := metricstest.Value(t, reg, "traverse_signal_p2p_relayed_total", "type", name); v != want {
			t.Errorf("relayed %s = %v, want %v", name, v, want)
		}
	}
	if v := metricstest.Value(t, reg, "traverse_signal_p2p_refused_total", "reason", "not_p2p"); v != 2 {
		t.Errorf("refused not_p2p = %v, want 2", v)
	}
	if v := metricstest.Value(t, reg, "traverse_signal_p2p_mode_changes_total", "mode", ModeSFU); v != 1 {
		t.Errorf("mode changes to sfu = %v, want 1", v)
	}
	if v := metricstest.Value(t, reg, "traverse_signal_p2p_sfu_releases_total"); v != 1 {
		t.Errorf("sfu releases = %v, want 1", v)
	}
	for _, c := range []*testClient{alice, mallory} {
		_ = c.conn.CloseNow()
	}
	hs.Close()
	_ = s.Close()
}

// TestP2PRefused: without --p2p, p2p messages are refused and counted;
// a token that may not publish may not send media peer to peer either.
func TestP2PRefused(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	s, _, hs, reg := newTestServer(t, nil)
	c := dial(t, hs.URL)
	c.send(map[string]any{"type": "join", "token": token(t, Claims{Room: "r", Identity: "alice", Publish: true, Subscribe: true})})
	if m := c.recv(); m.Type != TypeJoined || m.Mode != "" {
		t.Fatalf("joined without --p2p: %+v", m)
	}
	c.send(map[string]any{"type": TypeP2POffer, "sdp": browserOffer})
	wantError(t, c, "alice", ClassBadRequest, "no peer-to-peer rooms")
	if v := metricstest.Value(t, reg, "traverse_signal_p2p_refused_total", "reason", "disabled"); v != 1 {
		t.Errorf("refused disabled = %v, want 1", v)
	}
	hs.Close()
	_ = s.Close()

	s2, _, hs2, _ := newTestServer(t, func(c *Config) { c.P2P = true })
	v, _ := joinP2P(t, hs2.URL, "r", "viewer", false)
	wantMode(t, v, "viewer", ModeP2P, "", false)
	p, _ := joinP2P(t, hs2.URL, "r", "pub", true)
	wantMode(t, p, "pub", ModeP2P, "viewer", false)
	wantMode(t, v, "viewer", ModeP2P, "pub", true)
	v.send(map[string]any{"type": TypeP2POffer, "sdp": browserOffer}) // browserOffer sends media
	wantError(t, v, "viewer", ClassForbidden, "publishing")
	hs2.Close()
	_ = s2.Close()
}

// TestP2PFlood: a member flooding its peer with candidates is held to the
// per-connection rate limit: the peer receives at most the burst, the
// flooder gets rate-limited errors and, past the strikes, is cut off; the
// peer's session lives on.
func TestP2PFlood(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	s, _, hs, reg := newTestServer(t, func(c *Config) { c.P2P = true; c.MessageRate = 1; c.MessageBurst = 5 })
	alice, _ := joinP2P(t, hs.URL, "r", "alice", true)
	wantMode(t, alice, "alice", ModeP2P, "", false)
	bob, _ := joinP2P(t, hs.URL, "r", "bob", true)
	wantMode(t, bob, "bob", ModeP2P, "alice", false)
	wantMode(t, alice, "alice", ModeP2P, "bob", true)
	cand := map[string]any{"type": TypeP2PCandidate, "candidate": map[string]any{"candidate": "candidate:1 1 udp 1 192.0.2.1 5000 typ host"}}
	for range maxStrikes + 10 {
		alice.send(cand)
	}
	// alice is cut off with a fatal rate-limited error.
	for {
		m := alice.recv()
		if m.Type == TypeError && m.Fatal {
			if m.Class != ClassRateLimited {
				t.Fatalf("alice: %+v", m)
			}
			drainClose(alice)
			break
		}
	}
	relayed := metricstest.Value(t, reg, "traverse_signal_p2p_relayed_total", "type", TypeP2PCandidate)
	if relayed < 1 || relayed > 8 {
		t.Fatalf("relayed %v candidates of %d sent, want at most the burst (5) and what refilled", relayed, maxStrikes+10)
	}
	// bob got those, then alice's leave turns his room into a room of one.
	for range int(relayed) {
		if m := bob.recv(); m.Type != TypeP2PCandidate {
			t.Fatalf("bob: %+v", m)
		}
	}
	wantMode(t, bob, "bob", ModeP2P, "", false)
	bob.send(map[string]any{"type": "ping"})
	if m := bob.recv(); m.Type != TypePong {
		t.Fatalf("bob after the flood: %+v", m)
	}
	_ = bob.conn.CloseNow()
	hs.Close()
	_ = s.Close()
}
