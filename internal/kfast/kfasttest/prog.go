//go:build linux

package kfasttest

import (
	"bytes"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/traverse-rtc/traverse/internal/kfast"
)

// What a tc program returns.
const (
	ActOK       = 0          // TC_ACT_OK: up the stack (the lo case)
	ActUnspec   = ^uint32(0) // TC_ACT_UNSPEC (-1): handed on untouched
	ActRedirect = 7          // TC_ACT_REDIRECT
)

// Load loads a program with cfg (see kfast.Load) for BPF_PROG_TEST_RUN,
// skipping without root, and closes it when the test ends. Nothing is
// attached.
func Load(tb testing.TB, cfg kfast.Config) *kfast.Loader {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("loading eBPF programs needs root")
	}
	l, err := kfast.Load(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	return l
}

// TryRun runs prog once over frame with BPF_PROG_TEST_RUN and returns what
// it returned and the frame it left (room is made for a frame that grows).
func TryRun(prog *ebpf.Program, frame []byte) (uint32, []byte, error) {
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+256)}
	ret, err := prog.Run(opts)
	return ret, opts.DataOut, err
}

// Run is TryRun for a test: it skips where the kernel cannot test-run tc
// programs and fails on any other error.
func Run(tb testing.TB, prog *ebpf.Program, frame []byte) (uint32, []byte) {
	tb.Helper()
	ret, out, err := TryRun(prog, frame)
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			tb.Skipf("kernel cannot test-run tc programs: %v", err)
		}
		tb.Fatal(err)
	}
	return ret, out
}

// Benchmark reports the program's own cost per packet (metric
// prog-ns/pkt) as BPF_PROG_TEST_RUN measures it, running frame in batches
// of 200 on the same skb; every run must redirect. The caller installs
// flows that map the program's output back to its input, so that
// repeated runs keep hitting.
func Benchmark(b *testing.B, prog *ebpf.Program, frame []byte) {
	const batch = 200
	b.ReportAllocs()
	b.ResetTimer()
	var total time.Duration
	for done := 0; done < b.N; done += batch {
		ret, d, err := prog.Benchmark(frame, batch, nil)
		if err != nil {
			b.Fatal(err)
		}
		if ret != ActRedirect {
			b.Fatalf("returned %d", int32(ret))
		}
		total += d * batch
	}
	b.StopTimer()
	b.ReportMetric(float64(total.Nanoseconds())/float64((b.N+batch-1)/batch*batch), "prog-ns/pkt")
}

// Redirected runs prog over a fuzzed frame. It returns false when the
// kernel refuses the frame (shorter than its ethertype's header) or the
// program hands it on, which must leave it unchanged; any other action
// but a redirect fails the test. Otherwise it returns the redirected
// frame, for the caller to check.
func Redirected(t *testing.T, prog *ebpf.Program, in []byte) ([]byte, bool) {
	t.Helper()
	ret, out, err := TryRun(prog, in)
	if err != nil {
		return nil, false
	}
	switch ret {
	case ActUnspec:
		if !bytes.Equal(out, in) {
			t.Fatalf("handed-on frame changed:\n got %x\nwant %x", out, in)
		}
		return nil, false
	case ActRedirect:
		return out, true
	default:
		t.Fatalf("returned %d", int32(ret))
		return nil, false
	}
}
