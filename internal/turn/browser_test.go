package turn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/traverse-rtc/traverse/internal/browsertest"
)

// relayPage connects two RTCPeerConnections in one page through the TURN
// servers given in the query (relay candidates only) and sends a message
// over a data channel. window.result_ ends up "ok: <message> via <type>"
// or "error: ...".
const relayPage = `<!doctype html><script type="module">
const cfg = JSON.parse(decodeURIComponent(location.hash.slice(1)));
window.result_ = "";
window.log_ = [];
const log = (m) => window.log_.push(m);
try {
  const opts = {iceServers: cfg.iceServers, iceTransportPolicy: "relay"};
  const a = new RTCPeerConnection(opts), b = new RTCPeerConnection(opts);
  a.onicecandidate = (e) => { if (e.candidate) { log("a cand " + e.candidate.candidate); b.addIceCandidate(e.candidate); } };
  b.onicecandidate = (e) => { if (e.candidate) { log("b cand " + e.candidate.candidate); a.addIceCandidate(e.candidate); } };
  a.onicecandidateerror = (e) => log("a candidate error " + e.errorCode + " " + e.errorText + " " + e.url);
  a.oniceconnectionstatechange = () => log("a ice " + a.iceConnectionState);
  b.oniceconnectionstatechange = () => log("b ice " + b.iceConnectionState);
  const got = new Promise((res) => {
    b.ondatachannel = (e) => { e.channel.onmessage = (m) => res(m.data); };
  });
  const dc = a.createDataChannel("x");
  dc.onopen = () => dc.send("hello through traverse turn");
  await a.setLocalDescription();
  await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription();
  await a.setRemoteDescription(b.localDescription);
  const msg = await got;
  let local = "";
  (await a.getStats()).forEach((s) => {
    if (s.type === "candidate-pair" && s.state === "succeeded" && s.nominated) {
      (async () => {})();
      local = s.localCandidateId;
    }
  });
  let ctype = "";
  (await a.getStats()).forEach((s) => { if (s.id === local) ctype = s.candidateType + "/" + s.relayProtocol; });
  window.result_ = "ok: " + msg + " via " + ctype;
} catch (e) {
  window.result_ = "error: " + e;
}
</script>`

// TestBrowserRelay: headless Chromium with iceTransportPolicy "relay" and
// traverse as its only TURN server (REST credentials from the shared
// secret) connects two peer connections and moves a data-channel message,
// over UDP and over TCP to the server.
func TestBrowserRelay(t *testing.T) {
	if !browsertest.Here(t) {
		return
	}
	const secret = "browser-secret"
	s, _ := newTestServer(t, func(c *Config) {
		c.AllowLoopbackPeers = true
		c.AuthSecret = secret
	})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	b, err := browsertest.Launch(ctx, browsertest.Options{Log: func(l string) {
		if strings.Contains(l, "console") {
			t.Log(l)
		}
	}})
	if errors.Is(err, browsertest.ErrNoBrowser) {
		t.Skip("chromium is not installed")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte(relayPage))
	}))
	defer hs.Close()

	for _, transport := range []string{"udp", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			before := testutil.ToFloat64(s.m.toClientPackets)
			user, pass := RESTCredentials(secret, "browser", time.Hour, time.Now())
			cfg := map[string]any{"iceServers": []map[string]any{{
				"urls":     fmt.Sprintf("turn:%s?transport=%s", s.Addr(), transport),
				"username": user, "credential": pass,
			}}}
			j, _ := json.Marshal(cfg)
			p, err := b.NewPage(ctx, hs.URL+"/#"+strings.ReplaceAll(string(j), "#", "%23"))
			if err != nil {
				t.Fatal(err)
			}
			wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
			defer wcancel()
			if err := p.WaitFor(wctx, `window.result_ && window.result_.length > 0`, 50*time.Millisecond); err != nil {
				var logs []string
				_ = p.Eval(ctx, `window.log_`, &logs)
				t.Fatalf("%v; page log:\n%s\nserver: %d allocations, requests: %v", err, strings.Join(logs, "\n"), s.Allocations(), s.m.requests)
			}
			var result string
			if err := p.Eval(ctx, `window.result_`, &result); err != nil {
				t.Fatal(err)
			}
			t.Logf("page: %s", result)
			if !strings.HasPrefix(result, "ok: hello through traverse turn via relay/"+transport) {
				t.Fatalf("page result %q", result)
			}
			if after := testutil.ToFloat64(s.m.toClientPackets); after <= before {
				t.Errorf("no packets relayed to clients (%v -> %v)", before, after)
			}
		})
	}
}
