package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestServeRoomAPI runs serve with the room API, webhooks and a
// self-signed certificate from the command line: a client joins over wss
// with a token the API minted, the API lists it and the process's
// counters, closing the room removes it, and every webhook arrives signed.
func TestServeRoomAPI(t *testing.T) {
	const admin, hookKey = "admin-token-0123456789", "webhook-key-0123456789"
	var mu sync.Mutex
	var events []string
	hooks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := signal.VerifyWebhook([]byte(hookKey), r.Header.Get(signal.WebhookSignatureHeader), body, time.Now(), time.Minute); err != nil {
			t.Errorf("webhook: %v", err)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var ev signal.WebhookEvent
		_ = json.Unmarshal(body, &ev)
		mu.Lock()
		events = append(events, ev.Event+" "+ev.Reason)
		mu.Unlock()
	}))
	defer hooks.Close()

	p := newServePorts(t)
	runServeUntilReady(t, p.admin, p.args("48000-48099", "48200-48299", "--signal-admin-token", admin,
		"--signal-webhook-url", hooks.URL, "--signal-webhook-key", hookKey, "--signal-tls-self-signed"))
	// The test trusts the certificate serve made for itself.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer client.CloseIdleConnections()
	api := func(method, path, body string) map[string]any {
		t.Helper()
		req, _ := http.NewRequest(method, "https://"+p.signal+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+admin)
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var v map[string]any
		if err := json.NewDecoder(res.Body).Decode(&v); err != nil || res.StatusCode != 200 {
			t.Fatalf("%s %s: %d %v %v", method, path, res.StatusCode, v, err)
		}
		return v
	}
	tok := api("POST", "/v1/tokens", `{"room":"demo","identity":"alice"}`)["token"].(string)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "wss://"+p.signal+"/ws", &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	send := func(v any) {
		b, _ := json.Marshal(v)
		if err := conn.Write(ctx, websocket.MessageText, b); err != nil {
			t.Fatal(err)
		}
	}
	recv := func() signal.ServerMessage {
		_, b, err := conn.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var m signal.ServerMessage
		_ = json.Unmarshal(b, &m)
		return m
	}
	send(map[string]string{"type": "join", "token": tok})
	// serve hands the page its own STUN server, then its TURN server with
	// a minted credential.
	if m := recv(); m.Type != signal.TypeJoined || len(m.ICEServers) != 2 ||
		!slices.Equal(m.ICEServers[0].URLs, []string{"stun:" + lo(p.stun)}) || m.ICEServers[0].Username != "" ||
		m.ICEServers[1].Username == "" || !slices.Contains(m.ICEServers[1].URLs, "turn:"+lo(p.turn)+"?transport=udp") {
		t.Fatalf("joined: %+v", m)
	}
	if rooms := api("GET", "/v1/rooms", "")["rooms"].([]any); len(rooms) != 1 {
		t.Fatalf("rooms %v", rooms)
	}
	if c := api("GET", "/v1/stats", "")["counters"].(map[string]any); c["turn_allocations"] == nil || c["sfu_sessions"] == nil {
		t.Fatalf("counters %v", c)
	}
	api("DELETE", "/v1/rooms/demo", `{"reason":"maintenance"}`)
	if m := recv(); m.Class != signal.ClassRemoved || !strings.Contains(m.Message, "maintenance") {
		t.Fatalf("removed: %+v", m)
	}
	_, _, _ = conn.Read(ctx) // answer the close
	want := "room_started |participant_joined |participant_left room_closed|room_ended "
	testkit.WaitFor(t, 10*time.Second, "the webhooks", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(events, "|") == want
	})
}
