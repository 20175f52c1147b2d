// Package roletest runs a role in a test: every role (stun, turn, signal,
// sfu, admin) has Run(ctx), which serves until ctx ends and then closes
// the role. Run starts it and stops it when the test ends.
package roletest

import (
	"context"
	"testing"
	"time"
)

// Runner is a role: Run serves until ctx is done, then closes it.
type Runner interface {
	Run(ctx context.Context) error
}

// stopTimeout bounds how long a role may take to stop.
const stopTimeout = 10 * time.Second

// Run runs r.Run in a goroutine until the test ends, then cancels its
// context and waits for it: an error from Run, or a Run that takes more
// than 10 s to return, fails the test.
func Run(tb testing.TB, r Runner) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("roletest: Run: %v", err)
			}
		case <-time.After(stopTimeout):
			tb.Errorf("roletest: Run did not return within %v of its context's end", stopTimeout)
		}
	})
}
