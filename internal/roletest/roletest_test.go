package roletest

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

type fakeRole struct{ started, stopped atomic.Bool }

func (f *fakeRole) Run(ctx context.Context) error {
	f.started.Store(true)
	<-ctx.Done()
	f.stopped.Store(true)
	return nil
}

// TestRunStopsAtTestEnd: the role runs during the test and has returned
// once the test's cleanups are done.
func TestRunStopsAtTestEnd(t *testing.T) {
	f := &fakeRole{}
	t.Run("inner", func(t *testing.T) {
		Run(t, f)
		deadline := time.Now().Add(5 * time.Second)
		for !f.started.Load() {
			if time.Now().After(deadline) {
				t.Fatal("Run not called")
			}
			time.Sleep(time.Millisecond)
		}
		if f.stopped.Load() {
			t.Fatal("stopped before the test ended")
		}
	})
	if !f.stopped.Load() {
		t.Fatal("Run still running after the test ended")
	}
}
