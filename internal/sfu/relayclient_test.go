package sfu

import (
	"bytes"
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/rtp"

	"github.com/traverse-rtc/traverse/client/relayclient"
	"github.com/traverse-rtc/traverse/internal/cascade/relayauth"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/metricstest"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestRelayClientToWebRTCSubscriber: a relay client publishes VP8 and Opus
// through a node's relay port with a token; a pion subscriber on that
// node receives both like any publisher's tracks, and its keyframe
// requests reach the client.
func TestRelayClientToWebRTCSubscriber(t *testing.T) {
	e, bc := cascadeBus(t)
	tokenKey := bytes.Repeat([]byte("token-key-"), 4)
	n := startCascadeNode(t, e, "nodeA", func(c *Config) { c.CascadeClientAuth = relayauth.Verifier(tokenKey) })
	s, reg := n.s, n.reg

	api, err := loadgen.NewAPI(false, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sub, err := loadgen.Dial(ctx, api, loadgen.NewBusSignaler(bc, "nodeA"), loadgen.ClientConfig{Room: "r1", Identity: "viewer", Subscribe: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })

	now := time.Now()
	tok, sec, err := relayauth.Mint(tokenKey, signal.Claims{Room: "r1", Identity: "ingest", Publish: true, Expires: now.Add(time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	plis := make(chan struct{}, 1)
	c, err := relayclient.Dial(ctx, relayclient.Config{Server: s.Cascade().Addr(), Token: tok, Secret: sec, Room: "r1",
		Local: netip.MustParseAddrPort("127.0.0.1:0"),
		Tracks: []relayclient.Track{
			{ID: "cam", Video: true, MimeType: "video/VP8", ClockRate: 90000},
			{ID: "mic", MimeType: "audio/opus", ClockRate: 48000, Channels: 2, Fmtp: "minptime=10;useinbandfec=1"},
		},
		OnFeedback: func(uint8, uint8, []byte) {
			select {
			case plis <- struct{}{}:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.RemoteTracks("r1"); got != 2 {
		t.Fatalf("%d client tracks in the room, want 2", got)
	}
	stop := make(chan struct{})
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		vp8 := append([]byte{0x10, 0x00}, make([]byte, 900)...) // a one-packet VP8 keyframe
		opus := make([]byte, 80)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < 3000; i++ { // at most 30 s
			v := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: uint16(i), Timestamp: uint32(i) * 900,
				SSRC: 1111, Marker: true}, Payload: vp8}
			a := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: uint16(i), Timestamp: uint32(i) * 480,
				SSRC: 2222}, Payload: opus}
			for tr, p := range []*rtp.Packet{&v, &a} {
				b, err := p.Marshal()
				if err == nil {
					_ = c.WriteRTP(uint8(tr), 0, b)
				}
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	testkit.WaitFor(t, 20*time.Second, "the WebRTC subscriber receiving the relay client's video and audio", func() bool {
		return sub.Receives(1, 1, 50)
	})
	select {
	case <-plis:
	case <-time.After(10 * time.Second):
		t.Fatal("no keyframe request reached the relay client")
	}
	if n := metricstest.Value(t, reg, "traverse_relay_client_media_total"); n < 100 {
		t.Fatalf("%v client packets counted", n)
	}
	close(stop)
	<-sent
	c.Close()
}
