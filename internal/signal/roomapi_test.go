package signal

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"go.uber.org/goleak"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/metricstest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

const testAdmin = "admin-token-0123456789"

var testHookKey = []byte("webhook-key-0123456789")

// hookSink is a webhook receiver that checks every delivery's signature
// the way docs/api.md tells receivers to.
type hookSink struct {
	t      *testing.T
	mu     sync.Mutex
	events []WebhookEvent
	seen   map[string]bool
	bad    int
	// status answers each delivery (200 when nil).
	status func(n int) int
	n      int
}

func newHookSink(t *testing.T) (*hookSink, *httptest.Server) {
	h := &hookSink{t: t, seen: map[string]bool{}}
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	return h, hs
}

func (h *hookSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.n++
	if h.status != nil {
		if code := h.status(h.n); code != http.StatusOK {
			w.WriteHeader(code)
			return
		}
	}
	id := r.Header.Get(WebhookIDHeader)
	if err := VerifyWebhook(testHookKey, r.Header.Get(WebhookSignatureHeader), body, time.Now(), 5*time.Minute); err != nil || h.seen[id] ||
		r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		h.bad++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	h.seen[id] = true
	var ev WebhookEvent
	if err := json.Unmarshal(body, &ev); err != nil || ev.ID != id {
		h.bad++
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	h.events = append(h.events, ev)
}

func (h *hookSink) list() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, ev := range h.events {
		s := ev.Event + " " + ev.Room
		if ev.Participant != nil {
			s += " " + ev.Participant.Identity
		}
		if ev.Reason != "" {
			s += " " + ev.Reason
		}
		out = append(out, s)
	}
	return out
}

type apiClient struct {
	t    *testing.T
	base string
}

func (a apiClient) do(method, path, token string, body string) (int, map[string]any) {
	a.t.Helper()
	req, err := http.NewRequest(method, a.base+path, strings.NewReader(body))
	if err != nil {
		a.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	b, _ := io.ReadAll(resp.Body)
	if len(b) > 0 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(b, &v); err != nil {
			a.t.Fatalf("%s %s: %d %q: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode, v
}

func joinAs(t *testing.T, url, room, identity string) (*testClient, ServerMessage) {
	t.Helper()
	c := dial(t, url)
	c.send(map[string]any{"type": "join", "token": token(t, Claims{Room: room, Identity: identity, Publish: true, Subscribe: true})})
	m := c.recv()
	if m.Type != TypeJoined {
		t.Fatalf("join %s: %+v", identity, m)
	}
	return c, m
}

func TestRoomAPI(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leaks) }) // after the servers' cleanups
	sink, hooks := newHookSink(t)
	s, be, hs, reg := newTestServer(t, func(c *Config) {
		c.API = APIConfig{AdminToken: testAdmin, WebhookURLs: []string{hooks.URL + "/hook"}, WebhookKey: testHookKey,
			Stats: func() map[string]float64 { return map[string]float64{"turn_allocations": 2} }}
	})
	api := apiClient{t, hs.URL}

	alice, am := joinAs(t, hs.URL, "r1", "alice")
	bob, bm := joinAs(t, hs.URL, "r1", "bob")
	// The node tells bob's session that alice published a video track.
	be.mu.Lock()
	bobSink := be.sinks[1]
	be.mu.Unlock()
	bobSink(NodeEvent{Kind: NodeTrack, Event: EventPublished, Participant: Participant{ID: am.ParticipantID, Identity: "alice"},
		Track: Track{ID: "cam", StreamID: "s1", Kind: "video", Codec: "VP8"}})
	if m := bob.recv(); m.Type != TypeTrack {
		t.Fatalf("bob: %+v", m)
	}

	code, v := api.do("GET", "/v1/rooms", testAdmin, "")
	rooms, _ := v["rooms"].([]any)
	if code != 200 || len(rooms) != 1 || rooms[0].(map[string]any)["name"] != "r1" || rooms[0].(map[string]any)["participants"] != 2.0 ||
		rooms[0].(map[string]any)["node"] != "n1" || fmt.Sprint(rooms[0].(map[string]any)["nodes"]) != "[map[node:n1 participants:2]]" {
		t.Fatalf("GET /v1/rooms: %d %v", code, v)
	}
	code, v = api.do("GET", "/v1/rooms/r1", testAdmin, "")
	ps, _ := v["participants"].([]any)
	if code != 200 || len(ps) != 2 {
		t.Fatalf("GET /v1/rooms/r1: %d %v", code, v)
	}
	a := ps[0].(map[string]any)
	tracks, _ := a["tracks"].([]any)
	if a["identity"] != "alice" || a["id"] != am.ParticipantID || a["node"] != "n1" || a["client"] != "127.0.0.1" ||
		len(tracks) != 1 || tracks[0].(map[string]any)["id"] != "cam" {
		t.Fatalf("alice: %v", a)
	}
	if code, v = api.do("GET", "/v1/nodes", testAdmin, ""); code != 200 || len(v["nodes"].([]any)) != 1 {
		t.Fatalf("GET /v1/nodes: %d %v", code, v)
	}
	if code, v = api.do("GET", "/v1/stats", testAdmin, ""); code != 200 || v["participants"] != 2.0 || v["rooms"] != 1.0 ||
		v["counters"].(map[string]any)["turn_allocations"] != 2.0 {
		t.Fatalf("GET /v1/stats: %d %v", code, v)
	}
	if code, _ = api.do("GET", "/v1/rooms/nope", testAdmin, ""); code != 404 {
		t.Fatalf("unknown room: %d", code)
	}

	// Mute alice's camera: her client is asked to stop sending it.
	if code, v = api.do("POST", "/v1/rooms/r1/participants/"+am.ParticipantID+"/mute", testAdmin, `{"track":"cam","muted":true}`); code != 200 ||
		v["enforced"] != false { // the fake backend cannot mute at the node
		t.Fatalf("mute: %d %v", code, v)
	}
	if m := alice.recv(); m.Type != TypeMute || m.Track == nil || m.Track.ID != "cam" || m.Muted == nil || !*m.Muted || m.Message == "" {
		t.Fatalf("alice mute: %+v", m)
	}
	if code, _ = api.do("POST", "/v1/rooms/r1/participants/"+am.ParticipantID+"/mute", testAdmin, `{"track":"mic","muted":true}`); code != 404 {
		t.Fatalf("mute unknown track: %d", code)
	}
	if code, _ = api.do("POST", "/v1/rooms/r1/participants/"+am.ParticipantID+"/mute", testAdmin, `{"track":"cam","mutd":true}`); code != 400 {
		t.Fatalf("mute typo: %d", code)
	}
	_, v = api.do("GET", "/v1/rooms/r1", testAdmin, "")
	if !strings.Contains(mustJSON(v), `"muted":true`) {
		t.Fatalf("muted not shown: %v", v)
	}

	// Remove bob: his client hears why, then the socket closes.
	if code, v = api.do("DELETE", "/v1/rooms/r1/participants/"+bm.ParticipantID, testAdmin, `{"reason":"spam"}`); code != 200 || v["removed"] != 1.0 {
		t.Fatalf("remove: %d %v", code, v)
	}
	if m := bob.recv(); m.Type != TypeError || m.Class != ClassRemoved || !m.Fatal || !strings.Contains(m.Message, "spam") {
		t.Fatalf("bob removed: %+v", m)
	}
	expectClosed(t, bob)
	testkit.WaitFor(t, 5*time.Second, "bob gone from the room", func() bool {
		_, v := api.do("GET", "/v1/rooms/r1", testAdmin, "")
		ps, _ := v["participants"].([]any)
		return len(ps) == 1
	})

	// Mint a token and join with it.
	code, v = api.do("POST", "/v1/tokens", testAdmin, `{"room":"r2","identity":"carol","publish":false,"ttl":"10m"}`)
	if code != 200 {
		t.Fatalf("token: %d %v", code, v)
	}
	c, err := ParseToken(testKey, v["token"].(string), time.Now())
	if err != nil || c.Room != "r2" || c.Identity != "carol" || c.Publish || !c.Subscribe || c.Expires > time.Now().Add(11*time.Minute).Unix() {
		t.Fatalf("minted %+v %v", c, err)
	}
	if _, ok := v["relay_secret"]; ok {
		t.Fatal("a relay secret without relay: true")
	}
	// with relay: true, the relay client's secret for that token
	code, v = api.do("POST", "/v1/tokens", testAdmin, `{"room":"r2","identity":"ingest","relay":true}`)
	if sec, _ := v["relay_secret"].(string); code != 200 || sec != hex.EncodeToString(relaywire.ClientSecret(testKey, v["token"].(string))) {
		t.Fatalf("relay token: %d %v", code, v)
	}
	for _, body := range []string{`{"room":"` + strings.Repeat("r", 65) + `","identity":"x"}`, `{"room":"r","identity":"x","ttl":"-1h"}`,
		`{"room":"r","identity":"x","ttl":"1000h"}`, `{"room":"r"}`, `{"room":"r","identity":"x","admin":true}`, `[1]`, `{"room":"r","identity":"x"} {}`} {
		if code, _ := api.do("POST", "/v1/tokens", testAdmin, body); code != 400 {
			t.Errorf("POST /v1/tokens %s: %d, want 400", body, code)
		}
	}

	// Close the room: alice is removed too.
	if code, v = api.do("DELETE", "/v1/rooms/r1", testAdmin, ""); code != 200 || v["removed"] != 1.0 {
		t.Fatalf("close: %d %v", code, v)
	}
	if m := alice.recv(); m.Type != TypeError || m.Class != ClassRemoved || !strings.Contains(m.Message, "room closed") {
		t.Fatalf("alice: %+v", m)
	}
	expectClosed(t, alice)
	want := []string{"room_started r1", "participant_joined r1 alice", "participant_joined r1 bob",
		"participant_left r1 bob removed", "participant_left r1 alice room_closed", "room_ended r1"}
	testkit.WaitFor(t, 5*time.Second, "every webhook", func() bool { return len(sink.list()) >= len(want) })
	if got := sink.list(); strings.Join(got, "|") != strings.Join(want, "|") || sink.bad != 0 {
		t.Fatalf("webhooks %q (bad %d), want %q", got, sink.bad, want)
	}
	if n := metricstest.Value(t, reg, "traverse_signal_webhooks_total", "result", "ok"); n != float64(len(want)) {
		t.Fatalf("webhooks ok = %v", n)
	}
	for _, a := range []string{"remove", "close", "mute", "token"} {
		if metricstest.Value(t, reg, "traverse_signal_api_actions_total", "action", a) == 0 {
			t.Errorf("no %s action counted", a)
		}
	}
	_ = s.Close()
}

// expectClosed reads until the server closes the connection (answering
// its close frame, as a browser does).
func expectClosed(t *testing.T, c *testClient) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		if _, _, err := c.conn.Read(ctx); err != nil {
			if ctx.Err() != nil {
				t.Fatal("connection not closed")
			}
			return
		}
	}
}

func mustJSON(v any) string { b, _ := json.Marshal(v); return string(b) }

// TestRoomAPIRefusesWithoutAdminToken: every endpoint answers 401 without
// the admin token or with a wrong one (counted), and 404 when the API is
// off.
func TestRoomAPIRefusesWithoutAdminToken(t *testing.T) {
	_, _, hs, reg := newTestServer(t, func(c *Config) {
		c.API.AdminToken = testAdmin
		c.Static = fstest.MapFS{"index.html": {Data: []byte("page")}} // as in serve: GET / beside /v1/
	})
	api := apiClient{t, hs.URL}
	_, _ = joinAs(t, hs.URL, "r1", "alice")
	endpoints := [][2]string{{"GET", "/v1/nodes"}, {"GET", "/v1/stats"}, {"GET", "/v1/rooms"}, {"GET", "/v1/rooms/r1"},
		{"DELETE", "/v1/rooms/r1"}, {"DELETE", "/v1/rooms/r1/participants/x"}, {"POST", "/v1/rooms/r1/participants/x/mute"},
		{"POST", "/v1/tokens"}, {"GET", "/v1/nothing"}, {"PUT", "/v1/rooms"}}
	for _, e := range endpoints {
		for _, tok := range []string{"", "wrong-token-0123456789", testAdmin + "x", strings.ToUpper(testAdmin)} {
			code, v := api.do(e[0], e[1], tok, `{"room":"r1","identity":"mallory"}`)
			if code != http.StatusUnauthorized || v["token"] != nil {
				t.Errorf("%s %s with %q: %d %v", e[0], e[1], tok, code, v)
			}
		}
	}
	// A basic-auth or malformed header is no bearer token.
	req, _ := http.NewRequest("GET", hs.URL+"/v1/rooms", nil)
	req.SetBasicAuth("admin", testAdmin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("basic auth: %d", resp.StatusCode)
	}
	if n := metricstest.Value(t, reg, "traverse_signal_api_refused_total", "reason", "missing"); n != float64(len(endpoints)+1) {
		t.Errorf("refused missing = %v, want %d", n, len(endpoints)+1)
	}
	if n := metricstest.Value(t, reg, "traverse_signal_api_refused_total", "reason", "wrong"); n != float64(3*len(endpoints)) {
		t.Errorf("refused wrong = %v, want %d", n, 3*len(endpoints))
	}
	// The room is untouched.
	if code, v := api.do("GET", "/v1/rooms", testAdmin, ""); code != 200 || len(v["rooms"].([]any)) != 1 {
		t.Fatalf("rooms after the attempts: %d %v", code, v)
	}
	// A page of another origin is refused even with the token.
	req, _ = http.NewRequest("GET", hs.URL+"/v1/rooms", nil)
	req.Header.Set("Authorization", "Bearer "+testAdmin)
	req.Header.Set("Origin", "http://evil.example")
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("foreign origin: %d", resp.StatusCode)
	}

	// Without an admin token there is no API at all.
	_, _, hs2, _ := newTestServer(t, nil)
	if code, _ := (apiClient{t, hs2.URL}).do("GET", "/v1/rooms", "", ""); code != http.StatusNotFound {
		t.Errorf("API off: %d", code)
	}
	if _, err := New(Config{Key: testKey, Backend: &fakeBackend{}, API: APIConfig{AdminToken: "short"}}); !errors.Is(err, ErrConfig) {
		t.Errorf("short admin token: %v", err)
	}
}

// TestWebhookRetriesAndQueue: failed deliveries are retried a bounded
// number of times, and the queue drops (and counts) what does not fit.
func TestWebhookRetriesAndQueue(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leaks) }) // after the servers' cleanups
	sink, hooks := newHookSink(t)
	sink.status = func(n int) int {
		if n <= 2 { // the first two attempts fail
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	}
	s, _, reg := newServer(t, func(c *Config) {
		c.API = APIConfig{WebhookURLs: []string{hooks.URL}, WebhookKey: testHookKey, WebhookRetries: 2}
	})
	s.hooks.backoff = time.Millisecond
	s.hooks.emit(WebhookEvent{Event: WebhookRoomStarted, Room: "r"})
	testkit.WaitFor(t, 5*time.Second, "delivered after two retries", func() bool {
		return metricstest.Value(t, reg, "traverse_signal_webhooks_total", "result", "ok") == 1
	})
	if n := metricstest.Value(t, reg, "traverse_signal_webhooks_total", "result", "retry"); n != 2 {
		t.Fatalf("retries = %v, want 2", n)
	}
	// A receiver that always fails: 1 attempt + 2 retries, then given up.
	sink.mu.Lock()
	sink.status = func(int) int { return http.StatusInternalServerError }
	sink.n = 0
	sink.mu.Unlock()
	s.hooks.emit(WebhookEvent{Event: WebhookRoomEnded, Room: "r"})
	testkit.WaitFor(t, 5*time.Second, "given up", func() bool {
		return metricstest.Value(t, reg, "traverse_signal_webhooks_total", "result", "failed") == 1
	})
	sink.mu.Lock()
	if sink.n != 3 {
		t.Fatalf("attempts = %d, want 3", sink.n)
	}
	sink.mu.Unlock()
	_ = s.Close()

	// A receiver that hangs: the queue (2) fills, the rest is dropped.
	block := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer hang.Close()
	s2, _, reg2 := newServer(t, func(c *Config) {
		c.API = APIConfig{WebhookURLs: []string{hang.URL}, WebhookKey: testHookKey, WebhookQueue: 2, WebhookRetries: -1}
	})
	for range 10 {
		s2.hooks.emit(WebhookEvent{Event: WebhookRoomStarted, Room: "r"})
	}
	if n := metricstest.Value(t, reg2, "traverse_signal_webhooks_total", "result", "dropped"); n < 7 {
		t.Fatalf("dropped = %v, want at least 7 of 10 with a queue of 2", n)
	}
	close(block)
	_ = s2.Close()
}

func TestVerifyWebhook(t *testing.T) {
	now := time.Unix(1796620152, 0)
	body := []byte(`{"event":"room_started"}`)
	good := SignWebhook(testHookKey, body, now)
	tests := []struct {
		name   string
		key    []byte
		header string
		body   []byte
		at     time.Time
		ok     bool
	}{
		{"good", testHookKey, good, body, now, true},
		{"within tolerance", testHookKey, good, body, now.Add(4 * time.Minute), true},
		{"replayed later", testHookKey, good, body, now.Add(6 * time.Minute), false},
		{"from the future", testHookKey, good, body, now.Add(-6 * time.Minute), false},
		{"tampered body", testHookKey, good, []byte(`{"event":"room_ended"}`), now, false},
		{"wrong key", []byte("another-key-0123456789"), good, body, now, false},
		{"timestamp moved", testHookKey, strings.Replace(good, "t=1796620152", "t=1796620153", 1), body, now, false},
		{"no signature", testHookKey, "t=1796620152", body, now, false},
		{"not hex", testHookKey, "t=1796620152,v1=zz", body, now, false},
		{"empty", testHookKey, "", body, now, false},
	}
	for _, tt := range tests {
		err := VerifyWebhook(tt.key, tt.header, tt.body, tt.at, 5*time.Minute)
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrWebhookSignature)) {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
}

// FuzzAPIBody: the room API's request parsing never panics, and what it
// accepts mints a valid token.
func FuzzAPIBody(f *testing.F) {
	for _, s := range []string{`{"room":"r","identity":"a"}`, `{"room":"r","identity":"a","ttl":"1h","publish":false}`,
		`{"reason":"x"}`, `{"track":"*","muted":true}`, ``, `[]`, `{"room":1}`, `{"ttl":"-5s"}`, "{\"room\":\"r\u0000\"}"} {
		f.Add([]byte(s))
	}
	now := time.Unix(1796620152, 0)
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, err := parseTokenRequest(b, now); err == nil {
			if _, err := MintToken(testKey, c); err != nil {
				t.Fatalf("accepted %q but cannot mint: %v", b, err)
			}
		} else {
			var ae apiError
			if !errors.As(err, &ae) || ae.code < 400 || ae.code > 499 {
				t.Fatalf("error %v is not a 4xx", err)
			}
		}
		var m muteBody
		_ = parseAPIBody(b, &m)
		var r reasonBody
		_ = parseAPIBody(b, &r)
		_ = parseAPIBody(bytes.Repeat(b, 2), &r)
	})
}

// FuzzRoomAPI drives the whole API handler (routing, path values, bodies)
// with an authorised request of any method, path and body: it never
// panics or fails inside, and answers JSON.
func FuzzRoomAPI(f *testing.F) {
	for _, s := range []struct {
		method byte
		path   string
		body   string
	}{{0, "/v1/rooms", ""}, {0, "/v1/rooms/r1", ""}, {1, "/v1/tokens", `{"room":"r","identity":"a"}`},
		{2, "/v1/rooms/r1/participants/x", `{"reason":"x"}`}, {1, "/v1/rooms/r1/participants/x/mute", `{"track":"*","muted":true}`},
		{2, "/v1/rooms/r1", ""}, {0, "/v1/stats", ""}, {0, "/v1/nodes", ""}, {3, "/v1/rooms/%00", "{"}, {0, "/v1/rooms/" + strings.Repeat("a", 300), ""}} {
		f.Add(s.method, s.path, []byte(s.body))
	}
	s, err := New(Config{Key: testKey, Backend: &fakeBackend{nodes: []Node{{ID: "n1"}}}, API: APIConfig{AdminToken: testAdmin}})
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	methods := []string{"GET", "POST", "DELETE", "PUT"}
	f.Fuzz(func(t *testing.T, method byte, path string, body []byte) {
		if !strings.HasPrefix(path, "/v1/") || strings.ContainsAny(path, " \r\n\t#?") {
			return
		}
		req, err := http.NewRequest(methods[int(method)%len(methods)], "http://127.0.0.1"+path, bytes.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("Authorization", "Bearer "+testAdmin)
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		if w.Code >= 500 {
			t.Fatalf("%s %q %q: %d %s", req.Method, path, body, w.Code, w.Body)
		}
		// The mux's own answers (a redirect to the cleaned path, 405) are
		// not the API's.
		redirect := w.Code >= 300 && w.Code < 400
		if !redirect && w.Code != http.StatusMethodNotAllowed && !json.Valid(w.Body.Bytes()) {
			t.Fatalf("%s %q: %d not JSON: %q", req.Method, path, w.Code, w.Body)
		}
	})
}

// TestRoomAPINodes: a room spanning nodes (the cascade) shows the node it
// was placed on (its earliest participant's) and every node with its
// count, whatever the order of the members' map.
func TestRoomAPINodes(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	r := &apiRoom{name: "r", members: map[string]*member{}}
	if node, nodes := r.nodesLocked(); node != "" || len(nodes) != 0 || nodes == nil {
		t.Fatalf("empty room: %q %v", node, nodes)
	}
	for i, n := range []string{"n2", "n3", "n1", "n3", "n2", "n3"} {
		id := fmt.Sprintf("p%d", i)
		r.members[id] = &member{id: id, node: Node{ID: n}, joined: t0.Add(time.Duration(i) * time.Second)}
	}
	for range 5 {
		node, nodes := r.nodesLocked()
		if node != "n2" || fmt.Sprint(nodes) != "[{n1 1} {n2 2} {n3 3}]" {
			t.Fatalf("node %q, nodes %v", node, nodes)
		}
	}
	delete(r.members, "p0") // the first leaves: the next earliest's node
	if node, _ := r.nodesLocked(); node != "n3" {
		t.Fatalf("after the first left: %q", node)
	}
}

// listingDirectory is a room directory that can list the cluster's rooms
// (RoomLister), or fails to when err is set.
type listingDirectory struct {
	mu    sync.Mutex
	rooms []DirectoryRoom
	err   error
}

func (d *listingDirectory) RoomNode(context.Context, string) (string, bool, bool) {
	return "", false, false
}

func (d *listingDirectory) ListRooms(context.Context) ([]DirectoryRoom, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.rooms), d.err
}

// TestRoomAPIClusterScope: with a directory that lists the cluster's
// rooms, /v1/rooms lists rooms whose participants joined through other
// signal servers, counts a spanning room over the cluster, and the room's
// detail counts the participants joined elsewhere; a directory that
// cannot be read leaves the API answering for this server alone.
func TestRoomAPIClusterScope(t *testing.T) {
	dir := &listingDirectory{rooms: []DirectoryRoom{
		{Name: "r1", Node: "n1", Nodes: map[string]int{"n1": 1, "n2": 2}, Participants: 3},
		{Name: "r2", Node: "n2", Nodes: map[string]int{"n2": 4}, Participants: 4},
	}}
	_, _, hs, _ := newTestServer(t, func(c *Config) {
		c.API = APIConfig{AdminToken: testAdmin}
		c.Directory = dir
	})
	api := apiClient{t, hs.URL}
	joinAs(t, hs.URL, "r1", "alice") // through this server, on n1

	code, v := api.do("GET", "/v1/rooms", testAdmin, "")
	if code != 200 || v["scope"] != "cluster" ||
		fmt.Sprint(v["rooms"]) != "[map[name:r1 node:n1 nodes:[map[node:n1 participants:1] map[node:n2 participants:2]] participants:3 started:"+
			v["rooms"].([]any)[0].(map[string]any)["started"].(string)+"] map[name:r2 node:n2 nodes:[map[node:n2 participants:4]] participants:4]]" {
		t.Fatalf("GET /v1/rooms: %d %v", code, v)
	}
	code, v = api.do("GET", "/v1/rooms/r1", testAdmin, "")
	if ps, _ := v["participants"].([]any); code != 200 || len(ps) != 1 || v["elsewhere"] != 2.0 {
		t.Fatalf("GET /v1/rooms/r1: %d %v", code, v)
	}
	code, v = api.do("GET", "/v1/rooms/r2", testAdmin, "")
	if ps, _ := v["participants"].([]any); code != 200 || len(ps) != 0 || v["elsewhere"] != 4.0 || v["node"] != "n2" || v["started"] != nil {
		t.Fatalf("GET /v1/rooms/r2 (joined elsewhere): %d %v", code, v)
	}
	if code, _ = api.do("GET", "/v1/rooms/r3", testAdmin, ""); code != 404 {
		t.Fatalf("a room in neither: %d", code)
	}

	// A directory that lags (r1 not recorded yet) or cannot be read.
	dir.mu.Lock()
	dir.rooms = dir.rooms[1:]
	dir.mu.Unlock()
	code, v = api.do("GET", "/v1/rooms", testAdmin, "")
	if rooms, _ := v["rooms"].([]any); code != 200 || len(rooms) != 2 || rooms[0].(map[string]any)["participants"] != 1.0 {
		t.Fatalf("r1 not in the directory: %d %v", code, v)
	}
	dir.mu.Lock()
	dir.err = errors.New("bucket unreachable")
	dir.mu.Unlock()
	code, v = api.do("GET", "/v1/rooms", testAdmin, "")
	if rooms, _ := v["rooms"].([]any); code != 200 || v["scope"] != "process" || len(rooms) != 1 || rooms[0].(map[string]any)["name"] != "r1" {
		t.Fatalf("directory unreadable: %d %v", code, v)
	}
	if code, _ = api.do("GET", "/v1/rooms/r2", testAdmin, ""); code != 404 {
		t.Fatalf("r2 with the directory unreadable: %d", code)
	}
}
