// Package loadgentest joins loadgen clients in tests: one call that
// fails the test when the join does and closes the client when it ends.
package loadgentest

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/client/relayclient"
	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/loadgen"
)

// JoinTimeout bounds a Dial's join.
const JoinTimeout = 20 * time.Second

// Dial joins a client built on api through sig within JoinTimeout, or
// fails t; the client is closed when t ends.
func Dial(t testing.TB, api *webrtc.API, sig loadgen.Signaler, cfg loadgen.ClientConfig) *loadgen.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), JoinTimeout)
	defer cancel()
	c, err := loadgen.Dial(ctx, api, sig, cfg)
	if err != nil {
		t.Fatalf("dial %s: %v", cfg.Identity, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// API is loadgen.NewAPI for UDP on loopback, or fails t.
func API(t testing.TB) *webrtc.API {
	t.Helper()
	api, err := loadgen.NewAPI(false, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	return api
}

// BusDialer returns Dial with an API of its own, signaling over bc to the
// node named at each call.
func BusDialer(t testing.TB, bc *bus.Client) func(node string, cfg loadgen.ClientConfig) *loadgen.Client {
	api := API(t)
	return func(node string, cfg loadgen.ClientConfig) *loadgen.Client {
		t.Helper()
		return Dial(t, api, loadgen.NewBusSignaler(bc, node), cfg)
	}
}

// RelayAV publishes through relay client c, whose tracks 0 and 1 are VP8
// video and Opus audio, one packet of each every 10 ms (each video packet
// a one-packet keyframe) until t ends, for at most 60 s.
func RelayAV(t testing.TB, c *relayclient.Client) {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		vp8 := append([]byte{0x10, 0x00}, make([]byte, 900)...)
		opus := make([]byte, 80)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < 6000; i++ {
			v := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: uint16(i), Timestamp: uint32(i) * 900,
				SSRC: 1111, Marker: true}, Payload: vp8}
			a := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: uint16(i), Timestamp: uint32(i) * 480,
				SSRC: 2222}, Payload: opus}
			for tr, p := range []*rtp.Packet{&v, &a} {
				if b, err := p.Marshal(); err == nil {
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
	t.Cleanup(func() { close(stop); <-done })
}
