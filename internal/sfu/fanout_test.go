package sfu

import (
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/loadgen"
)

// TestFanoutProfile is a manual tool (SFU_FANOUT=1): one publisher, 50
// subscribers for a few seconds, printing the batching figures.
func TestFanoutProfile(t *testing.T) {
	if os.Getenv("SFU_FANOUT") == "" {
		t.Skip("SFU_FANOUT not set")
	}
	h := newHarness(t, Config{}) // TRAVERSE_SFU_DATA_PATH chooses the path
	pub := h.dial(loadgen.ClientConfig{Room: "f", Identity: "pub", Publish: true})
	<-pub.Connected()
	for i := range 50 {
		h.dial(loadgen.ClientConfig{Room: "f", Identity: fmt.Sprintf("s%d", i), Subscribe: true})
	}
	time.Sleep(2 * time.Second)
	f0 := h.s.Forwarded()
	var w0, b0 uint64
	if h.s.batch != nil {
		w0, b0 = h.s.batch.Stats().Writes, h.s.batch.Stats().Batches
	}
	time.Sleep(5 * time.Second)
	if p := os.Getenv("SFU_HEAP"); p != "" {
		runtime.GC()
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		_ = pprof.WriteHeapProfile(f)
		f.Close()
	}
	f := h.s.Forwarded() - f0
	if h.s.batch != nil {
		w, b := h.s.batch.Stats().Writes-w0, h.s.batch.Stats().Batches-b0
		t.Logf("forwarded %d; datagrams %d in %d batches (%.1f per sendmmsg), drops %d", f, w, b, float64(w)/float64(b), h.s.batch.Stats().Drops)
	} else {
		t.Logf("forwarded %d", f)
	}
}
