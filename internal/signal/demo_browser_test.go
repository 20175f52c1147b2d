package signal_test

// Issue 14: the demo page says what went wrong, and the client module
// (web/traverse.js) reconnects. Real Chromium (internal/browsertest) on the
// demo page served by signal, as in browser_test.go: each test checks the
// message the page shows (in #messages, the DOM a user reads, not only
// window.traverse), that the Join form is usable again without a reload,
// and saves a screenshot (browsertest.ScreenshotDir) checked for content.

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/browsertest"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// demoPage opens the demo page at query in a fresh browser.
func demoPage(ctx context.Context, t *testing.T, st *stack, name, query string, o browsertest.Options) *participant {
	t.Helper()
	o.Log = func(s string) {
		if os.Getenv("BROWSER_LOG") != "" || strings.HasPrefix(s, "exception") {
			t.Logf("%s: %s", name, s)
		}
	}
	b, err := browsertest.Launch(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if os.Getenv("BROWSER_LOG") != "" {
		query += "&debug=1"
	}
	p, err := b.NewPage(ctx, st.url+"/"+query)
	if err != nil {
		t.Fatal(err)
	}
	return &participant{name: name, b: b, p: p}
}

// shown waits until the page shows a message of level (error, warning,
// info) holding every one of parts, and returns its text.
func shown(ctx context.Context, t *testing.T, pt *participant, level string, parts ...string) string {
	t.Helper()
	cond := fmt.Sprintf(`[...document.querySelectorAll('#messages li.%s')].some((e) => %s)`, level, containsAll(parts))
	if err := pt.p.WaitFor(ctx, cond, 100*time.Millisecond); err != nil {
		var msgs any
		_ = pt.p.Eval(context.Background(), `[...document.querySelectorAll('#messages li')].map((e) => e.className + ': ' + e.textContent)`, &msgs)
		t.Fatalf("%s: no %s message with %q: %v; the page shows %v", pt.name, level, parts, err, msgs)
	}
	var text string
	_ = pt.p.Eval(ctx, fmt.Sprintf(`[...document.querySelectorAll('#messages li.%s')].find((e) => %s).textContent`, level, containsAll(parts)), &text)
	return text
}

func containsAll(parts []string) string {
	var c []string
	for _, s := range parts {
		c = append(c, fmt.Sprintf("e.textContent.includes(%q)", s))
	}
	return strings.Join(c, " && ")
}

// joinUsable checks the form is unlocked and Join can be pressed.
func joinUsable(ctx context.Context, t *testing.T, pt *participant) {
	t.Helper()
	var ok bool
	if err := pt.p.Eval(ctx, `(() => { const g = document.getElementById('go'), r = document.getElementById('room');
  return !g.disabled && !g.hidden && !r.disabled && document.getElementById('leave').hidden; })()`, &ok); err != nil || !ok {
		t.Fatalf("%s: the Join form is not usable again after the error (err %v)", pt.name, err)
	}
}

// screenshot saves the page and checks it is not blank and shows the
// elements of selectors.
func screenshot(ctx context.Context, t *testing.T, pt *participant, name string, selectors ...string) {
	t.Helper()
	path, _, err := pt.p.Screenshot(ctx, name)
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	missing, err := pt.p.Visible(ctx, selectors...)
	if err != nil || len(missing) > 0 {
		t.Fatalf("screenshot %s: not shown: %v (%v)", name, missing, err)
	}
	t.Logf("screenshot %s", path)
}

func mint(t *testing.T, st *stack, room, identity string, pub bool, exp time.Time) string {
	t.Helper()
	tok, err := signal.MintToken(st.key, signal.Claims{Room: room, Identity: identity, Publish: pub, Subscribe: true, Expires: exp.Unix()})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestBrowserDemoExpiredToken: a page given an expired token says so, its
// form is usable again, and Join with a good token then works without a
// reload. A room name longer than the bus takes is refused in the page
// before anything is sent.
func TestBrowserDemoExpiredToken(t *testing.T) {
	if !browsertest.Here(t) {
		return
	}
	st, ctx := pageTest(t, stackOptions{}, 60*time.Second)
	old := mint(t, st, "expired", "alice", true, time.Now().Add(-time.Hour))
	pt := demoPage(ctx, t, st, "alice", "?room=expired&identity=alice&autojoin=1&token="+old, browsertest.Options{})
	msg := shown(ctx, t, pt, "error", "token has expired")
	t.Logf("the page says: %s", msg)
	joinUsable(ctx, t, pt)
	screenshot(ctx, t, pt, "demo-expired-token", "#messages li.error", "#go", "#status")

	// A fresh token in the same page, no reload: Join works.
	good := mint(t, st, "expired", "alice", true, time.Now().Add(time.Hour))
	if err := pt.p.Eval(ctx, fmt.Sprintf(`document.getElementById('token').value = %q; document.getElementById('go').click()`, good), nil); err != nil {
		t.Fatal(err)
	}
	if err := pt.p.WaitFor(ctx, `window.traverse.joined && document.getElementById('status').textContent.includes('You are alice in room expired')`, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	var locked bool
	if err := pt.p.Eval(ctx, `document.getElementById('room').disabled && document.getElementById('identity').disabled && document.getElementById('go').hidden && document.querySelectorAll('#messages li.error').length === 0`, &locked); err != nil || !locked {
		t.Fatalf("in the room: fields not locked or the old error still shown (%v)", err)
	}
	pt.p.Eval(ctx, `window.traverse.leave()`, nil)
	joinUsable(ctx, t, pt)

	// A room name of 65 characters: the bus refuses it, so the page does.
	long := strings.Repeat("r", 65)
	if err := pt.p.Navigate(ctx, st.url+"/?room="+long+"&autojoin=1"); err != nil {
		t.Fatal(err)
	}
	t.Logf("the page says: %s", shown(ctx, t, pt, "error", "room name is too long", "65 characters"))
	joinUsable(ctx, t, pt)
}

// TestBrowserDemoNoNode: with no SFU node up, the page says there is none
// and Join is usable again.
func TestBrowserDemoNoNode(t *testing.T) {
	if !browsertest.Here(t) {
		return
	}
	st, ctx := pageTest(t, stackOptions{noNode: true}, 60*time.Second)
	pt := demoPage(ctx, t, st, "bob", "?room=nonode&identity=bob&autojoin=1", browsertest.Options{})
	t.Logf("the page says: %s", shown(ctx, t, pt, "error", "No media server (SFU node) is available"))
	joinUsable(ctx, t, pt)
	var status string
	_ = pt.p.Eval(ctx, `document.getElementById('status').textContent`, &status)
	if strings.Contains(status, "You are") {
		t.Fatalf("status %q claims a room", status)
	}
	screenshot(ctx, t, pt, "demo-no-node", "#messages li.error", "#go", "#status")
}

// TestBrowserDemoCameraDenied: a browser that refuses camera and
// microphone says so and joins as a viewer on purpose: it sees and hears
// the publisher, the participant list counts both, and the status line
// says who it is and that it views.
func TestBrowserDemoCameraDenied(t *testing.T) {
	if !browsertest.Here(t) {
		return
	}
	st, ctx := pageTest(t, stackOptions{}, 60*time.Second)
	demoPage(ctx, t, st, "pub", "?room=denied&identity=pub&autojoin=1", browsertest.Options{})
	v := demoPage(ctx, t, st, "viewer", "?room=denied&identity=viewer&autojoin=1", browsertest.Options{DenyMedia: true})
	t.Logf("the page says: %s", shown(ctx, t, v, "warning", "was denied", "viewer on purpose"))
	for {
		s, err := v.summary(ctx)
		if err == nil && len(s.counts("video")) >= 1 && len(s.counts("audio")) >= 1 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the viewer receives nothing: %+v %v", s, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := v.p.WaitFor(ctx, `document.getElementById('count').textContent === '2' &&
  document.getElementById('status').textContent.includes('You are viewer in room denied (viewer)') &&
  document.getElementById('mute').disabled && document.getElementById('cam').disabled`, 100*time.Millisecond); err != nil {
		var st string
		_ = v.p.Eval(context.Background(), `document.getElementById('status').textContent + ' / count ' + document.getElementById('count').textContent`, &st)
		t.Fatalf("%v: status %q", err, st)
	}
	// Let the received video paint before the picture.
	if err := v.p.WaitFor(ctx, `[...document.querySelectorAll('.tile video')].some((e) => e.videoWidth > 0 && e.currentTime > 0.5)`, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	screenshot(ctx, t, v, "demo-camera-denied", "#messages li.warning", ".tile video", "#plist li", "#status")
}

// TestBrowserDemoReconnect: the signaling connections are cut (as a
// network change does): both pages reconnect with the same token, join
// again, and each decodes the other's video on a new peer connection.
func TestBrowserDemoReconnect(t *testing.T) {
	if !browsertest.Here(t) {
		return
	}
	st, ctx := pageTest(t, stackOptions{}, 90*time.Second)
	var parts []*participant
	for _, name := range []string{"p0", "p1"} {
		parts = append(parts, demoPage(ctx, t, st, name, "?room=recon&identity="+name+"&autojoin=1", browsertest.Options{}))
	}
	for _, pt := range parts {
		decodesVideo(ctx, t, pt, "window.traverse.errors")
		if err := pt.p.Eval(ctx, `window.oldPC = window.traverse.pc; true`, nil); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	if n := st.cut(); n < 2 {
		t.Fatalf("cut %d WebSockets, want 2", n)
	}
	for _, pt := range parts {
		if err := pt.p.WaitFor(ctx, `window.traverse.joined && window.traverse.pc && window.traverse.pc !== window.oldPC`, 100*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	for _, pt := range parts {
		decodesVideo(ctx, t, pt, "window.traverse.errors")
		shown(ctx, t, pt, "info", "Reconnected")
		if err := pt.p.WaitFor(ctx, `document.getElementById('count').textContent === '2'`, 100*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("both back in the room and decoding after %v", time.Since(start).Round(time.Millisecond))
	screenshot(ctx, t, parts[0], "demo-reconnected", "#messages li.info", ".tile video", "#plist li")
}

// TestBrowserDemoNodeFailover: two SFU nodes; the room's node stops. Both
// pages must end up in the room again on the other node, decoding each
// other, without a reload: through the server's rejoin message where
// signal sends it (issue 14's failover), else through the client's
// reconnect (the node's end closes the sessions with "unavailable").
func TestBrowserDemoNodeFailover(t *testing.T) {
	if !browsertest.Here(t) {
		return
	}
	st := startStackWith(t, stackOptions{noNode: true})
	_, stop1 := runNode(t, st.log, st.connect("sfu"), "node1")
	if !testkit.Eventually(10*time.Second, func() bool { return len(st.be.Nodes()) == 1 }) {
		t.Fatal("node1 never announced itself")
	}
	ctx := deadline(t, 120*time.Second)
	var parts []*participant
	for _, name := range []string{"p0", "p1"} {
		parts = append(parts, demoPage(ctx, t, st, name, "?room=failover&identity="+name+"&autojoin=1", browsertest.Options{}))
	}
	onNode := func(pt *participant, node string) {
		t.Helper()
		for {
			var on string
			_ = pt.p.Eval(ctx, `window.traverse.joined ? window.traverse.joined.node : ''`, &on)
			s, err := pt.summary(ctx)
			if on == node && err == nil && s.ConnectionState == "connected" && len(s.counts("video")) >= 1 {
				return
			}
			if ctx.Err() != nil {
				var msgs any
				_ = pt.p.Eval(context.Background(), `window.traverse.messages`, &msgs)
				t.Fatalf("%s: not decoding on %s (on %q): %+v %v; messages %v", pt.name, node, on, s, err, msgs)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	for _, pt := range parts {
		onNode(pt, "node1")
	}
	runNode(t, st.log, st.connect("sfu:node2"), "node2")
	if !testkit.Eventually(10*time.Second, func() bool { return len(st.be.Nodes()) == 2 }) {
		t.Fatal("node2 never announced itself")
	}
	start := time.Now()
	stop1()
	for _, pt := range parts {
		onNode(pt, "node2")
	}
	var how []string
	for _, pt := range parts {
		var msgs []struct{ Level, Text string }
		_ = pt.p.Eval(ctx, `window.traverse.messages`, &msgs)
		for _, m := range msgs {
			if strings.Contains(m.Text, "moving you to another") || strings.Contains(m.Text, "Reconnected") {
				how = append(how, pt.name+": "+m.Text)
			}
		}
	}
	t.Logf("both decoding on node2 %v after node1 stopped: %v", time.Since(start).Round(time.Millisecond), how)
	screenshot(ctx, t, parts[1], "demo-node-failover", ".tile video", "#plist li", "#status")
}

// TestBrowserDemoNoCamera: a browser with no camera or microphone at all
// says none was found and joins as a viewer.
func TestBrowserDemoNoCamera(t *testing.T) {
	if !browsertest.Here(t) {
		return
	}
	st, ctx := pageTest(t, stackOptions{}, 60*time.Second)
	v := demoPage(ctx, t, st, "nocam", "?room=nocam&identity=nocam&autojoin=1", browsertest.Options{NoDevices: true})
	t.Logf("the page says: %s", shown(ctx, t, v, "warning", "No camera or microphone found", "viewer on purpose"))
	if err := v.p.WaitFor(ctx, `document.getElementById('status').textContent.includes('You are nocam in room nocam (viewer)')`, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	screenshot(ctx, t, v, "demo-no-camera", "#messages li.warning", "#status")
}
