package signal_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/loadgen/loadgentest"
)

// TestLayerThroughSignal: a subscriber's layer messages go from signal's
// WebSocket through the bus to the SFU, which then forwards the simulcast
// layer asked for: by the size the video is shown at (320x180: the low
// layer) and by layer number. No browser: pion clients on loopback.
func TestLayerThroughSignal(t *testing.T) {
	st := startStack(t, false)
	ws := "ws" + strings.TrimPrefix(st.url, "http") + "/ws"
	api := loadgentest.API(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dial := func(sig loadgen.Signaler, cfg loadgen.ClientConfig) *loadgen.Client {
		c, err := loadgen.Dial(ctx, api, sig, cfg)
		if err != nil {
			t.Fatalf("dial %s: %v", cfg.Identity, err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	dial(loadgen.NewWSSignaler(ws, loadgen.DemoTokens(ws)), loadgen.ClientConfig{Room: "sizes", Identity: "pub",
		Publish: true, Simulcast: true, VideoBitrate: 1_200_000, KeyframeInterval: 500 * time.Millisecond})
	sig := loadgen.NewWSSignaler(ws, loadgen.DemoTokens(ws))
	sub := dial(sig, loadgen.ClientConfig{Room: "sizes", Identity: "sub", Subscribe: true})
	var video *loadgen.RecvStats
	wait := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			if ctx.Err() != nil {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	wait("the top layer", func() bool {
		for _, tr := range sub.Tracks() {
			if tr.Kind == "video" && tr.Packets() > 20 {
				video = tr
			}
		}
		return video != nil && video.Layer() == 2
	})
	one := 1
	for _, c := range []struct {
		r    loadgen.LayerRequest
		want int
	}{
		{loadgen.LayerRequest{Track: "video", StreamID: "pub", Width: 320, Height: 180}, 0},
		{loadgen.LayerRequest{Track: "*", MaxLayer: &one}, 1},
	} {
		if err := sig.Layer(ctx, c.r); err != nil {
			t.Fatal(err)
		}
		wait(fmt.Sprintf("layer %d after %+v", c.want, c.r), func() bool { return video.Layer() == c.want })
	}
}
