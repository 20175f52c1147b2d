package signal_test

// The client module's handling of the server's rejoin message
// ({"type":"rejoin","reason":"drain"}, docs/client-js.md): the page must
// drop its peer connection, send a fresh join with the same token on the
// same WebSocket, publish and subscribe again, and say so. A relay in this
// test stands between the page and the real signal server, as signal
// itself will behave once it sends rejoin (another branch of issue 14):
// on trigger it tells the page "rejoin", ends the page's old session (the
// upstream WebSocket), and carries the page's next join to a fresh
// upstream session. The page's WebSocket stays the same one throughout.

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/traverse-rtc/traverse/internal/browsertest"
	"github.com/traverse-rtc/traverse/web"
)

// rejoinRelay serves the demo page and relays /ws to signal at upstream.
type rejoinRelay struct {
	t        *testing.T
	upstream string
	trigger  chan string // a reason: send rejoin now
	accepted atomic.Int32
	joins    atomic.Int32 // joins relayed
}

func (rr *rejoinRelay) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/ws" {
		http.FileServerFS(web.FS).ServeHTTP(w, r)
		return
	}
	down, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	rr.accepted.Add(1)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer down.CloseNow()
	var mu sync.Mutex // guards up
	var up *websocket.Conn
	dial := func() error {
		c, _, err := websocket.Dial(ctx, rr.upstream, nil)
		if err != nil {
			return err
		}
		mu.Lock()
		up = c
		mu.Unlock()
		go func() { // upstream -> page, until this upstream ends
			for {
				typ, data, err := c.Read(ctx)
				if err != nil {
					return
				}
				if down.Write(ctx, typ, data) != nil {
					return
				}
			}
		}()
		return nil
	}
	if err := dial(); err != nil {
		rr.t.Errorf("relay: dial signal: %v", err)
		return
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case reason := <-rr.trigger:
				msg, _ := json.Marshal(map[string]string{"type": "rejoin", "reason": reason})
				mu.Lock()
				old := up
				up = nil // the page's messages wait for its join
				mu.Unlock()
				_ = down.Write(ctx, websocket.MessageText, msg)
				_ = old.Close(websocket.StatusNormalClosure, "rejoin")
			}
		}
	}()
	for { // page -> upstream
		typ, data, err := down.Read(ctx)
		if err != nil {
			return
		}
		var m struct{ Type string }
		_ = json.Unmarshal(data, &m)
		mu.Lock()
		c := up
		mu.Unlock()
		if c == nil {
			if m.Type != "join" {
				continue // what the page sent before it saw rejoin
			}
			if err := dial(); err != nil {
				rr.t.Errorf("relay: dial signal: %v", err)
				return
			}
			mu.Lock()
			c = up
			mu.Unlock()
		}
		if m.Type == "join" {
			rr.joins.Add(1)
		}
		if c.Write(ctx, typ, data) != nil {
			return
		}
	}
}

func TestBrowserDemoServerRejoin(t *testing.T) {
	if !browsertest.Here(t) {
		return
	}
	st := startStack(t, false)
	rr := &rejoinRelay{t: t, upstream: "ws" + strings.TrimPrefix(st.url, "http") + "/ws", trigger: make(chan string, 1)}
	relay := httptest.NewServer(rr)
	t.Cleanup(relay.Close)
	ctx := deadline(t, 90*time.Second)
	other := demoPage(ctx, t, st, "p1", "?room=rejoin&identity=p1&autojoin=1", browsertest.Options{})
	tok := mint(t, st, "rejoin", "p0", true, time.Now().Add(time.Hour))
	viaRelay := &stack{url: relay.URL}
	p0 := demoPage(ctx, t, viaRelay, "p0", "?room=rejoin&identity=p0&autojoin=1&token="+tok, browsertest.Options{})
	decodesVideo(ctx, t, p0, "window.traverse.messages")
	decodesVideo(ctx, t, other, "window.traverse.messages")
	if err := p0.p.Eval(ctx, `window.oldPC = window.traverse.pc; window.events = [];
  for (const e of ['rejoin', 'reconnecting', 'reconnected']) window.traverse.room.on(e, () => window.events.push(e)); true`, nil); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rr.trigger <- "drain"
	if err := p0.p.WaitFor(ctx, `window.traverse.joined && window.traverse.pc !== window.oldPC`, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	decodesVideo(ctx, t, p0, "window.traverse.messages")
	decodesVideo(ctx, t, other, "window.traverse.messages") // p0 published again, on its new session
	t.Logf("the page says: %s", shown(ctx, t, p0, "info", "The media server is draining: moved you to node node1, back in the room"))
	if err := other.p.WaitFor(ctx, `document.getElementById('count').textContent === '2'`, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	var events []string
	if err := p0.p.Eval(ctx, `window.events`, &events); err != nil {
		t.Fatal(err)
	}
	if len(events) != 2 || events[0] != "rejoin" || events[1] != "reconnected" {
		t.Fatalf("events %v, want [rejoin reconnected] (no reconnect of the WebSocket)", events)
	}
	if n, j := rr.accepted.Load(), rr.joins.Load(); n != 1 || j != 2 {
		t.Fatalf("the page opened %d WebSockets and sent %d joins, want 1 and 2", n, j)
	}
	t.Logf("rejoined on the same WebSocket and decoding both ways after %v", time.Since(start).Round(time.Millisecond))
}
