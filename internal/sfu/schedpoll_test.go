package sfu

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"
)

// The scheduler poll runs while packets are forwarded, idles after, and
// returns promptly when its context ends, in both states.
func TestSchedPollStops(t *testing.T) {
	for _, busy := range []bool{true, false} {
		s := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.schedPoll(ctx)
		}()
		deadline := time.Now().Add(300 * time.Millisecond)
		for time.Now().Before(deadline) {
			if busy {
				s.forwarded.Add(1)
			}
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("busy=%v: schedPoll did not return after cancel", busy)
		}
	}
}
