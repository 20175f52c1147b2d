package loadgen

import (
	"context"
	"time"
)

// Pace calls step once every period until ctx ends, with the step's
// number on the wall clock (1, 2, ...). A loaded machine drops ticker
// ticks: Pace catches up, at most maxCatchUp steps at once, and numbers
// past what it skips, so the offered rate holds.
func Pace(ctx context.Context, period time.Duration, maxCatchUp int, step func(tick uint32)) {
	t := time.NewTicker(period)
	defer t.Stop()
	start := time.Now()
	var tick uint32
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		due := uint32(time.Since(start) / period)
		for n := 0; tick < due && n < maxCatchUp; n++ {
			tick++
			step(tick)
		}
		if tick < due {
			tick = due
		}
	}
}
