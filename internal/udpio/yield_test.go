package udpio

import (
	"runtime"
	"sync/atomic"
	"testing"
)

// TestYieldRunsOthers checks that Yield passes through the scheduler: on
// one P, a goroutine made runnable before it runs during it.
func TestYieldRunsOthers(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	for i := 0; i < 100; i++ {
		var ran atomic.Bool
		go ran.Store(true)
		Yield()
		if !ran.Load() {
			t.Fatalf("round %d: the runnable goroutine did not run during Yield", i)
		}
	}
}
