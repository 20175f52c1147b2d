package cluster_test

import (
	"bytes"
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/client/relayclient"
	"github.com/traverse-rtc/traverse/internal/cascade/relayauth"
	"github.com/traverse-rtc/traverse/internal/cluster/clustertest"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/loadgen/loadgentest"
	"github.com/traverse-rtc/traverse/internal/sfu"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestCascadeRelayClients: relay clients in a cascade. A relay client
// publishes VP8 and Opus on node A (no WebRTC participant there); the
// bus hears of its tracks as of a publisher's, so the controller carries
// them to node B, where a pion subscriber receives both, and to node C,
// where a receiving relay client (the only one in the room there: its
// presence brings the room's tracks) gets them over C's relay port. Its
// keyframe request crosses the cascade back to the publishing client.
func TestCascadeRelayClients(t *testing.T) {
	c, nodes, mint := relayClientCascade(t, "nodeA", "nodeB", "nodeC")
	a, cc := nodes[0], nodes[2]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var plis atomic.Int64
	ptok, psec := mint("ingest", true, false)
	pub, err := relayclient.Dial(ctx, relayclient.Config{Server: a.s.Cascade().Addr(), Token: ptok, Secret: psec, Room: "r1",
		Local: netip.MustParseAddrPort("127.0.0.1:0"),
		Tracks: []relayclient.Track{
			{ID: "cam", Video: true, MimeType: "video/VP8", ClockRate: 90000},
			{ID: "mic", MimeType: "audio/opus", ClockRate: 48000, Channels: 2, Fmtp: "minptime=10;useinbandfec=1"},
		},
		OnFeedback: func(uint8, uint8, []byte) { plis.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pub.Close)
	loadgentest.RelayAV(t, pub)

	dial := cascadeDialer(t, c)
	subB := dial("nodeB", loadgen.ClientConfig{Room: "r1", Identity: "sub-b", Subscribe: true})
	waitMedia(t, map[string]*loadgen.Client{"B": subB})

	stok, ssec := mint("recorder", false, true)
	var video, audio atomic.Int64
	var vidIdx atomic.Int32
	vidIdx.Store(-1)
	recv, err := relayclient.Dial(ctx, relayclient.Config{Server: cc.s.Cascade().Addr(), Token: stok, Secret: ssec, Room: "r1",
		Local: netip.MustParseAddrPort("127.0.0.1:0"), Subscribe: true,
		OnTrack: func(tr relayclient.RecvTrack) {
			if tr.Video && tr.Publisher == "ingest" {
				vidIdx.Store(int32(tr.Index))
			}
		},
		OnRTP: func(track, _ uint8, _ []byte) {
			if int32(track) == vidIdx.Load() {
				video.Add(1)
			} else {
				audio.Add(1)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(recv.Close)
	testkit.WaitFor(t, 20*time.Second, "the relay client on C receiving A's relay client's video and audio", func() bool {
		return video.Load() > 50 && audio.Load() > 50
	})
	// C has no other subscriber: what C sends back to A is the relay
	// client's request (A asked the publishing client itself when the
	// controller first needed its tracks: that is not counted here)
	before, in := plis.Load(), a.counter(t, "traverse_sfu_cascade_feedback_in_total")
	testkit.WaitFor(t, 10*time.Second, "C's relay client's keyframe request across the cascade, at the publishing client", func() bool {
		_ = recv.RequestKeyframe(uint8(vidIdx.Load()), 0)
		return cc.counter(t, "traverse_sfu_cascade_feedback_out_total") > 0 &&
			a.counter(t, "traverse_sfu_cascade_feedback_in_total") > in && plis.Load() > before
	})
	if got := cc.counter(t, "traverse_relay_client_sent_total"); got < 100 {
		t.Fatalf("C sent %v messages to its receiving client", got)
	}
	if got := a.counter(t, "traverse_relay_client_media_total"); got < 100 {
		t.Fatalf("A counted %v packets of its relay client", got)
	}
}

// relayClientCascade starts a bus, a controller and the named SFU nodes,
// each taking relay clients; mint mints a relay client's credentials for
// room r1 on them.
func relayClientCascade(t *testing.T, names ...string) (c *clustertest.Cluster, nodes []*cascadeNode,
	mint func(identity string, pub, sub bool) (string, []byte)) {
	t.Helper()
	c = clustertest.Start(t, 1)
	startCascadeController(t, c, time.Hour)
	tokenKey := bytes.Repeat([]byte("token-key-"), 4)
	auth := func(cfg *sfu.Config) { cfg.CascadeClientAuth = relayauth.Verifier(tokenKey) }
	for _, name := range names {
		nodes = append(nodes, startCascadeSFU(t, c, name, auth))
	}
	mint = func(id string, pub, sub bool) (string, []byte) {
		tok, sec, err := relayauth.Mint(tokenKey, signal.Claims{Room: "r1", Identity: id, Publish: pub, Subscribe: sub,
			Expires: time.Now().Add(time.Hour).Unix()})
		if err != nil {
			t.Fatal(err)
		}
		return tok, sec
	}
	return c, nodes, mint
}
