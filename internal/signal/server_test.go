package signal

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/traverse-rtc/traverse/internal/metricstest"
)

// fakeBackend is one node that answers every offer with a canned answer and
// records what it got.
type fakeBackend struct {
	mu     sync.Mutex
	nodes  []Node
	joins  []JoinRequest
	ufrags []string
	cands  []Candidate
	sinks  []func(NodeEvent)
	closed int
}

func (b *fakeBackend) Nodes() []Node { b.mu.Lock(); defer b.mu.Unlock(); return b.nodes }

func (b *fakeBackend) Join(_ context.Context, n Node, req JoinRequest, sink func(NodeEvent)) (Link, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.joins = append(b.joins, req)
	b.sinks = append(b.sinks, sink)
	return &fakeLink{b: b}, nil
}

type fakeLink struct{ b *fakeBackend }

func (l *fakeLink) Offer(_ context.Context, sdp, ufrag string) (string, error) {
	l.b.mu.Lock()
	l.b.ufrags = append(l.b.ufrags, ufrag)
	l.b.mu.Unlock()
	return nodeAnswer, nil
}
func (l *fakeLink) Answer(context.Context, string) error { return nil }
func (l *fakeLink) Candidate(_ context.Context, c Candidate) error {
	l.b.mu.Lock()
	l.b.cands = append(l.b.cands, c)
	l.b.mu.Unlock()
	return nil
}
func (l *fakeLink) Close() error { l.b.mu.Lock(); l.b.closed++; l.b.mu.Unlock(); return nil }

type testClient struct {
	t    *testing.T
	conn *websocket.Conn
}

func dial(t *testing.T, url string) *testClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(url, "http")+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	return &testClient{t: t, conn: c}
}

func (c *testClient) send(v any) {
	c.t.Helper()
	b, _ := json.Marshal(v)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, b); err != nil {
		c.t.Fatal(err)
	}
}

// recvRaw reads the next message as sent.
func (c *testClient) recvRaw() string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, b, err := c.conn.Read(ctx)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return string(b)
}

func (c *testClient) recv() ServerMessage {
	c.t.Helper()
	var m ServerMessage
	if err := json.Unmarshal([]byte(c.recvRaw()), &m); err != nil {
		c.t.Fatal(err)
	}
	return m
}

func newTestServer(t *testing.T, mod func(*Config)) (*Server, *fakeBackend, *httptest.Server, *prometheus.Registry) {
	t.Helper()
	s, be, reg := newServer(t, mod)
	hs := httptest.NewServer(s)
	t.Cleanup(func() { hs.Close(); _ = s.Close() })
	return s, be, hs, reg
}

// newServer returns a Server on a fake backend, not yet serving.
func newServer(t *testing.T, mod func(*Config)) (*Server, *fakeBackend, *prometheus.Registry) {
	t.Helper()
	be := &fakeBackend{nodes: []Node{{ID: "n1", Region: "eu", Public: netip.MustParseAddr("203.0.113.7")}}}
	reg := prometheus.NewRegistry()
	cfg := Config{Key: testKey, Backend: be, Registerer: reg, DemoTokens: true,
		ICEServers: func(id string) []ICEServer {
			return []ICEServer{{URLs: []string{"turn:127.0.0.1:3478"}, Username: "u-" + id, Credential: "c"}}
		}}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, be, reg
}

func token(t *testing.T, c Claims) string {
	t.Helper()
	if c.Expires == 0 {
		c.Expires = time.Now().Add(time.Hour).Unix()
	}
	s, err := MintToken(testKey, c)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSessionFlow(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	s, be, hs, _ := newTestServer(t, nil)
	c := dial(t, hs.URL)
	c.send(map[string]any{"type": "offer", "sdp": browserOffer})
	if m := c.recv(); m.Type != TypeError || m.Class != ClassBadRequest || m.Fatal {
		t.Fatalf("offer before join: %+v", m)
	}
	c.send(map[string]any{"type": "join", "token": token(t, Claims{Room: "r1", Identity: "alice", Publish: true, Subscribe: true})})
	m := c.recv()
	if m.Type != TypeJoined || m.Room != "r1" || m.Identity != "alice" || m.Node != "n1" ||
		len(m.ICEServers) != 1 || m.ICEServers[0].Username != "u-alice" {
		t.Fatalf("joined: %+v", m)
	}
	c.send(map[string]any{"type": "offer", "sdp": browserOffer})
	m = c.recv()
	if m.Type != TypeAnswer || !strings.Contains(m.SDP, "203.0.113.7 7882 typ host") {
		t.Fatalf("answer: %+v", m)
	}
	c.send(map[string]any{"type": "candidate", "candidate": map[string]any{"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host", "sdpMid": "0"}})
	c.send(map[string]any{"type": "ping"})
	if m := c.recv(); m.Type != TypePong {
		t.Fatalf("pong: %+v", m)
	}
	be.mu.Lock()
	if len(be.ufrags) != 1 || be.ufrags[0] != "q7bK" || len(be.cands) != 1 || be.joins[0].Room != "r1" || !be.joins[0].Publish {
		t.Fatalf("backend saw %+v %+v %+v", be.ufrags, be.cands, be.joins)
	}
	sink := be.sinks[0]
	be.mu.Unlock()

	// The node renegotiates and trickles: the client sees the public address.
	sink(NodeEvent{Kind: NodeOffer, SDP: strings.Replace(browserOffer, "a=mid:1\r\n", "a=mid:1\r\na=candidate:1 1 udp 1 10.0.0.5 7882 typ host\r\n", 1)})
	if m := c.recv(); m.Type != TypeOffer || !strings.Contains(m.SDP, "203.0.113.7 7882") {
		t.Fatalf("node offer: %+v", m)
	}
	sink(NodeEvent{Kind: NodeCandidate, Candidate: Candidate{Candidate: "candidate:9 1 udp 1 10.0.0.5 7882 typ host"}})
	if m := c.recv(); m.Type != TypeCandidate || m.Candidate.Candidate != "candidate:9 1 udp 1 203.0.113.7 7882 typ host" {
		t.Fatalf("node candidate: %+v", m)
	}
	sink(NodeEvent{Kind: NodeParticipant, Event: EventJoined, Participant: Participant{ID: "p2", Identity: "carol"}})
	if m := c.recv(); m.Type != TypeParticipant || m.Event != EventJoined || m.Participant.Identity != "carol" {
		t.Fatalf("participant: %+v", m)
	}
	sink(NodeEvent{Kind: NodeTrack, Event: EventPublished, Participant: Participant{ID: "p2", Identity: "carol"},
		Track: Track{ID: "v", StreamID: "s", Kind: "video"}})
	if m := c.recv(); m.Type != TypeTrack || m.Event != EventPublished || m.Track.StreamID != "s" || m.Participant.ID != "p2" {
		t.Fatalf("track: %+v", m)
	}
	sink(NodeEvent{Kind: NodeSpeakers, Speakers: []Speaker{{ID: "p2", Level: 90}}})
	if m := c.recv(); m.Type != TypeSpeakers || len(m.Speakers) != 1 {
		t.Fatalf("speakers: %+v", m)
	}
	c.send(map[string]any{"type": "join", "token": "x"})
	if m := c.recv(); m.Type != TypeError || m.Class != ClassBadRequest {
		t.Fatalf("second join: %+v", m)
	}
	c.send(map[string]any{"type": "leave"})
	if m := c.recv(); m.Type != TypeBye {
		t.Fatalf("bye: %+v", m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := c.conn.Read(ctx); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Fatalf("after bye: %v", err)
	}
	hs.Close()
	_ = s.Close()
	be.mu.Lock()
	defer be.mu.Unlock()
	if be.closed != 1 {
		t.Fatalf("link closed %d times", be.closed)
	}
}

func TestBadTokens(t *testing.T) {
	_, _, hs, reg := newTestServer(t, nil)
	for _, tc := range []struct {
		token, reason string
	}{
		{"garbage", "malformed"},
		{token(t, Claims{Room: "r", Identity: "a", Expires: time.Now().Add(-time.Hour).Unix()}), "expired"},
		{tamper(token(t, Claims{Room: "r", Identity: "a"})), "signature"},
	} {
		c := dial(t, hs.URL)
		c.send(map[string]any{"type": "join", "token": tc.token})
		m := c.recv()
		if m.Type != TypeError || m.Class != ClassUnauthorized || !m.Fatal {
			t.Fatalf("%s: %+v", tc.reason, m)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _, err := c.conn.Read(ctx)
		cancel()
		if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
			t.Fatalf("%s: after fatal error: %v", tc.reason, err)
		}
	}
	n := metricstest.Value(t, reg, "traverse_signal_tokens_rejected_total")
	if n != 3 {
		t.Fatalf("tokens rejected = %v, want 3", n)
	}
}

// tamper changes the first character of a token's signature, all six of
// whose bits are significant (the last character's low bits are padding).
func tamper(tok string) string {
	i := strings.LastIndexByte(tok, '.') + 1
	c := byte('A')
	if tok[i] == 'A' {
		c = 'B'
	}
	return tok[:i] + string(c) + tok[i+1:]
}

func TestNoPublishRight(t *testing.T) {
	_, _, hs, _ := newTestServer(t, nil)
	c := dial(t, hs.URL)
	c.send(map[string]any{"type": "join", "token": token(t, Claims{Room: "r", Identity: "viewer", Subscribe: true})})
	if m := c.recv(); m.Type != TypeJoined || *m.Publish {
		t.Fatalf("%+v", m)
	}
	c.send(map[string]any{"type": "offer", "sdp": browserOffer})
	if m := c.recv(); m.Type != TypeError || m.Class != ClassForbidden {
		t.Fatalf("publishing offer without the right: %+v", m)
	}
	recv := strings.ReplaceAll(browserOffer, "a=sendrecv", "a=recvonly")
	c.send(map[string]any{"type": "offer", "sdp": recv})
	if m := c.recv(); m.Type != TypeAnswer {
		t.Fatalf("recvonly offer: %+v", m)
	}
}

func TestLimits(t *testing.T) {
	_, _, hs, reg := newTestServer(t, func(c *Config) { c.MessageRate = 1; c.MessageBurst = 3; c.MaxMessage = 1024 })
	c := dial(t, hs.URL)
	for range 3 {
		c.send(map[string]any{"type": "ping"})
	}
	c.send(map[string]any{"type": "ping"})
	for range 3 {
		if m := c.recv(); m.Type != TypePong {
			t.Fatalf("%+v", m)
		}
	}
	if m := c.recv(); m.Type != TypeError || m.Class != ClassRateLimited {
		t.Fatalf("4th ping: %+v", m)
	}
	if n := metricstest.Value(t, reg, "traverse_signal_rate_limited_total"); n != 1 {
		t.Fatalf("rate limited = %v", n)
	}
	// An oversized message closes the connection with 1009.
	c2 := dial(t, hs.URL)
	c2.send(map[string]any{"type": "offer", "sdp": strings.Repeat("x", 2048)})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _, err := c2.conn.Read(ctx)
	if websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
		t.Fatalf("oversized: %v", err)
	}
}

func TestNoNode(t *testing.T) {
	s, be, hs, _ := newTestServer(t, nil)
	be.mu.Lock()
	be.nodes = nil
	be.mu.Unlock()
	if !errors.Is(s.Ready(), ErrNoNode) {
		t.Fatal("ready without nodes")
	}
	c := dial(t, hs.URL)
	c.send(map[string]any{"type": "join", "token": token(t, Claims{Room: "r", Identity: "a"})})
	if m := c.recv(); m.Type != TypeError || m.Class != ClassUnavailable || !m.Fatal {
		t.Fatalf("%+v", m)
	}
}

func TestDemoToken(t *testing.T) {
	_, _, hs, _ := newTestServer(t, nil)
	res, err := http.Get(hs.URL + "/token?room=demo&identity=ann")
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]string
	_ = json.NewDecoder(res.Body).Decode(&body)
	res.Body.Close()
	c, err := ParseToken(testKey, body["token"], time.Now())
	if err != nil || c.Room != "demo" || c.Identity != "ann" || !c.Publish || !c.Subscribe {
		t.Fatalf("%+v %v", c, err)
	}
	if res, _ := http.Get(hs.URL + "/token?room=bad%20room"); res.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad room: %d", res.StatusCode)
	}
	_, _, hs2, _ := newTestServer(t, func(c *Config) { c.DemoTokens = false })
	if res, _ := http.Get(hs2.URL + "/token?room=demo"); res.StatusCode != http.StatusNotFound {
		t.Fatalf("demo tokens off: %d", res.StatusCode)
	}
}
