package cluster_test

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/client/relayclient"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestCascadeRelayClientLayerChoice: a receiving relay client on node C
// chooses a layer of a simulcast pion publisher's video on node A (no
// other participant on C); the keyframe the switch needs is asked of the
// publisher across the cascade (C's feedback out, A's feedback in: the
// publisher sends no keyframe unasked during the test), and from then on
// C sends the client that layer alone. When the publisher stops sending
// that layer (a browser short of uplink drops its top layer), C sends the
// client the layer below it (its liveness is the packets crossing the
// cascade), and the chosen one again when the publisher takes it up.
func TestCascadeRelayClientLayerChoice(t *testing.T) {
	c, nodes, mint := relayClientCascade(t, "nodeA", "nodeC")
	a, cc := nodes[0], nodes[1]
	dial := cascadeDialer(t, c)
	pub := dial("nodeA", loadgen.ClientConfig{Room: "r1", Identity: "alice", Publish: true, Simulcast: true, VideoBitrate: 600_000,
		KeyframeInterval: time.Hour})
	tok, sec := mint("recorder", false, true)
	var mu sync.Mutex
	var layers []uint8 // of the video packets, in arrival order
	vid := -1
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	recv, err := relayclient.Dial(ctx, relayclient.Config{Server: cc.s.Cascade().Addr(), Token: tok, Secret: sec, Room: "r1",
		Local: netip.MustParseAddrPort("127.0.0.1:0"), Subscribe: true,
		OnTrack: func(tr relayclient.RecvTrack) {
			if tr.Video {
				mu.Lock()
				vid = int(tr.Index)
				mu.Unlock()
			}
		},
		OnRTP: func(track, layer uint8, _ []byte) {
			mu.Lock()
			defer mu.Unlock()
			if int(track) == vid {
				layers = append(layers, layer)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(recv.Close)
	// seen returns the layers of the video packets from mark on (a bit
	// mask) and the number of video packets so far.
	seen := func(mark int) (mask int, n int) {
		mu.Lock()
		defer mu.Unlock()
		return maskOf(layers[mark:]), len(layers)
	}
	testkit.WaitFor(t, 30*time.Second, "every layer of A's video at the relay client on C", func() bool {
		m, _ := seen(0)
		return m == 7
	})
	_, mark := seen(0)
	out, in := cc.counter(t, "traverse_sfu_cascade_feedback_out_total"), a.counter(t, "traverse_sfu_cascade_feedback_in_total")
	mu.Lock()
	idx := uint8(vid)
	mu.Unlock()
	if err := recv.SetLayer(idx, 2); err != nil {
		t.Fatal(err)
	}
	alone := func(mark int, l uint8) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			tail := layers[mark:]
			return len(tail) >= 60 && maskOf(tail[len(tail)-60:]) == 1<<l
		}
	}
	testkit.WaitFor(t, 15*time.Second, "layer 2 alone at the relay client on C", alone(mark, 2))
	if cc.counter(t, "traverse_sfu_cascade_feedback_out_total") <= out || a.counter(t, "traverse_sfu_cascade_feedback_in_total") <= in {
		t.Fatal("the layer choice's keyframe request did not cross the cascade")
	}
	_, mark = seen(0)
	pub.StopLayer(2, true)
	testkit.WaitFor(t, 15*time.Second, "the fallback to layer 1 at the relay client on C", alone(mark, 1))
	_, mark = seen(0)
	pub.StopLayer(2, false)
	testkit.WaitFor(t, 15*time.Second, "layer 2 again at the relay client on C", alone(mark, 2))
}

func maskOf(ls []uint8) int {
	m := 0
	for _, l := range ls {
		m |= 1 << l
	}
	return m
}
