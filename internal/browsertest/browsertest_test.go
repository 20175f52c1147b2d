package browsertest

import (
	"context"
	"errors"
	"testing"
	"time"
)

// loopbackPage connects two RTCPeerConnections in one page, sending the
// fake camera from one to the other.
const loopbackPage = `<!doctype html><script type="module">
const a = new RTCPeerConnection(), b = new RTCPeerConnection();
a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate);
b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate);
const media = await navigator.mediaDevices.getUserMedia({video: true, audio: true});
media.getTracks().forEach((t) => a.addTrack(t, media));
await a.setLocalDescription();
await b.setRemoteDescription(a.localDescription);
await b.setLocalDescription();
await a.setRemoteDescription(b.localDescription);
window.frames_ = async () => {
  let n = 0;
  (await b.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') n = s.framesDecoded || 0; });
  return n;
};
</script>`

func TestLoopbackPeerConnection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b, err := Launch(ctx, Options{Log: func(s string) { t.Log(s) }})
	if errors.Is(err, ErrNoBrowser) {
		t.Skip("chromium is not installed")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p, err := b.NewPage(ctx, ServePage(t, loopbackPage))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitFor(ctx, `window.frames_`, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitFor(ctx, `window.frames_().then((n) => n > 10)`, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := p.Eval(ctx, `frames_()`, &n); err != nil {
		t.Fatal(err)
	}
	t.Logf("frames decoded: %d", n)
	var v int
	if err := p.Eval(ctx, `Promise.resolve(41 + 1)`, &v); err != nil || v != 42 {
		t.Fatalf("eval: %d, %v", v, err)
	}
	if err := p.Eval(ctx, `(() => { throw new Error("boom") })()`, nil); err == nil {
		t.Fatal("exception not reported")
	}
}
