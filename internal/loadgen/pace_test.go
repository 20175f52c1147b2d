package loadgen

import (
	"context"
	"testing"
	"time"
)

// TestPaceCatchesUp: steps come numbered 1, 2, ... in order; a step that
// holds Pace up past several periods is followed by at most maxCatchUp
// steps at once, then by the step due on the wall clock.
func TestPaceCatchesUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	var ticks []uint32
	Pace(ctx, 10*time.Millisecond, 3, func(tick uint32) {
		ticks = append(ticks, tick)
		if tick == 2 {
			time.Sleep(100 * time.Millisecond) // a stalled machine: ~10 periods lost
		}
	})
	if len(ticks) < 10 || ticks[0] != 1 || ticks[1] != 2 {
		t.Fatalf("ticks %v", ticks)
	}
	skipped := false
	for i := 1; i < len(ticks); i++ {
		switch d := ticks[i] - ticks[i-1]; {
		case d == 0 || ticks[i] < ticks[i-1]:
			t.Fatalf("ticks out of order: %v", ticks)
		case d > 1:
			skipped = true
		}
	}
	if !skipped {
		t.Fatalf("no ticks skipped after the stall: %v", ticks)
	}
	if last := ticks[len(ticks)-1]; last < 30 || last > 41 {
		t.Fatalf("last tick %d after 400 ms of 10 ms periods", last)
	}
}
