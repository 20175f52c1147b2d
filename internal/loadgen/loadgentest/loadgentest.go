// Package loadgentest joins loadgen clients in tests: one call that
// fails the test when the join does and closes the client when it ends.
package loadgentest

import (
	"context"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"

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
