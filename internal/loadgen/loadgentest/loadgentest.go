// Package loadgentest joins loadgen clients in tests: one call that
// fails the test when the join does and closes the client when it ends.
package loadgentest

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"

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
