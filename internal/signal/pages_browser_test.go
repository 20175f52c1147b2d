package signal_test

// The other pages in web/: the client module's example page joins and
// shows the others' video; the operator console loads and, on a signal
// server without the room API (no admin token), says so. And the demo's
// controls: mute, camera off, the device pickers, copy link.

import (
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/browsertest"
)

func TestBrowserExamplePage(t *testing.T) {
	if !browsertest.Here(t) {
		return
	}
	st, ctx := pageTest(t, stackOptions{}, 60*time.Second)
	demoPage(ctx, t, st, "demo", "?room=example&identity=demo&autojoin=1", browsertest.Options{})
	ex := demoPage(ctx, t, st, "example", "example.html?room=example&identity=ex", browsertest.Options{})
	if err := ex.p.WaitFor(ctx, `document.getElementById('status').textContent.includes('in room example as ex') ||
  document.getElementById('status').textContent.includes('demo joined')`, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := ex.p.WaitFor(ctx, `[...document.querySelectorAll('video')].some((v) => v.videoWidth > 0 && v.currentTime > 0.3) &&
  window.room.state === 'joined' && [...window.room.participants.values()].some((p) => p.identity === 'demo')`, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	screenshot(ctx, t, ex, "example-page", "video", "#status")
}

func TestBrowserConsoleWithoutAPI(t *testing.T) {
	if !browsertest.Here(t) {
		return
	}
	st, ctx := pageTest(t, stackOptions{}, 60*time.Second)
	con := demoPage(ctx, t, st, "console", "console.html?", browsertest.Options{})
	if err := con.p.Eval(ctx, `document.getElementById('admin').value = 'some-admin-token-0123456789'; document.getElementById('signin').click()`, nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("the console says: %s", shown(ctx, t, con, "error", "no room API", "--admin-token"))
	var hidden bool
	if err := con.p.Eval(ctx, `document.getElementById('dash').hidden && !document.getElementById('signin').hidden`, &hidden); err != nil || !hidden {
		t.Fatalf("the dashboard shows without a login (%v)", err)
	}
	screenshot(ctx, t, con, "console-no-api", "#messages li.error", "#signin")
}

// TestBrowserDemoControls: in the room, Mute and Camera off toggle the
// sent tracks, the pickers list the (fake) devices, and Copy link gives
// the room's link; Leave unlocks the form.
func TestBrowserDemoControls(t *testing.T) {
	if !browsertest.Here(t) {
		return
	}
	st, ctx := pageTest(t, stackOptions{}, 60*time.Second)
	pt := demoPage(ctx, t, st, "carol", "?room=controls&identity=carol&autojoin=1", browsertest.Options{})
	if err := pt.p.WaitFor(ctx, `window.traverse.joined && document.getElementById('camera').options.length > 1 && document.getElementById('mic').options.length > 1`, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	var ok bool
	check := func(what, expr string) {
		t.Helper()
		if err := pt.p.Eval(ctx, expr, &ok); err != nil || !ok {
			t.Fatalf("%s: %v", what, err)
		}
	}
	sent := `window.traverse.pc.getSenders().filter((s) => s.track)`
	check("mute", `document.getElementById('mute').click(); `+sent+`.some((s) => s.track.kind === 'audio' && !s.track.enabled) && document.getElementById('mute').textContent === 'Unmute'`)
	check("camera off", `document.getElementById('cam').click(); `+sent+`.some((s) => s.track.kind === 'video' && !s.track.enabled) && document.getElementById('cam').textContent === 'Camera on'`)
	check("unmute", `document.getElementById('mute').click(); `+sent+`.every((s) => s.track.kind !== 'audio' || s.track.enabled)`)
	if err := pt.p.Eval(ctx, `document.getElementById('copy').click()`, nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("copy link: %s", shown(ctx, t, pt, "info", "?room=controls"))
	// Another camera from the picker: the sent video track is replaced
	// in place, the same sender.
	check("switch camera", `(async () => { const s = `+sent+`.find((x) => x.track.kind === 'video'), old = s.track;
  const sel = document.getElementById('camera'); sel.value = sel.options[1].value; sel.dispatchEvent(new Event('change'));
  for (let i = 0; i < 50 && s.track === old; i++) await new Promise((r) => setTimeout(r, 100));
  return s.track !== old && s.track.readyState === 'live' && old.readyState === 'ended'; })()`)
	screenshot(ctx, t, pt, "demo-controls", ".tile video", "#mute", "#status")
	check("leave", `window.traverse.leave(); !document.getElementById('go').disabled && !document.getElementById('room').disabled`)
}
