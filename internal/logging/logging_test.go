package logging

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/traverse-rtc/traverse/internal/testkit"
)

// sink counts what a logger writes and keeps it for inspection.
type sink struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines int
	max   int // longest line
}

func (s *sink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lines++
	s.max = max(s.max, len(p))
	return s.buf.Write(p)
}

func (s *sink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func (s *sink) size() (bytes, lines, longest int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Len(), s.lines, s.max
}

func newTest(t testing.TB, c Config) (*slog.Logger, *Handler, *sink) {
	t.Helper()
	s := &sink{}
	log, err := New(s, c)
	if err != nil {
		t.Fatal(err)
	}
	return log, log.Handler().(*Handler), s
}

// fakeClock drives a limiter by hand.
type fakeClock struct{ now time.Duration }

func (f *fakeClock) use(h *Handler) {
	h.lim.clock = func() time.Duration { return f.now }
	h.lim.noTimers = true
}

// The attack: 100,000 records of one message, each with a 64 KB value
// (what one unparseable 64 KB datagram logged in full did to the SIP
// port). The output stays within Burst records per interval elapsed, each
// line within MaxValue plus overhead, and every suppressed record is
// counted. With the limits off (Burst and MaxValue -1, as before), 1,000
// of these records write 328 MB as text: the whole loop would write 33 GB.
// Here it writes 14 KB.
func TestFloodBounded(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			log, h, s := newTest(t, Config{Format: format})
			big := strings.Repeat("A", 64<<10)
			raw := bytes.Repeat([]byte{0xff}, 64<<10)
			const n = 100_000
			start := time.Now()
			for i := range n {
				log.Error("sip: unparseable datagram", "data", big, "raw", raw, "i", i)
			}
			elapsed := time.Since(start)
			bytesOut, lines, longest := s.size()
			windows := int(elapsed/DefaultInterval) + 2
			if maxLines := windows * (DefaultBurst + 1); lines > maxLines {
				t.Errorf("%d lines in %s, want at most %d", lines, elapsed, maxLines)
			}
			// Two values of 256 bytes (the byte slice quoted, up to 4x)
			// and the markers, time, level, message and index.
			if longest > 2048 {
				t.Errorf("longest line %d bytes", longest)
			}
			if bytesOut > lines*2048 {
				t.Errorf("%d bytes written", bytesOut)
			}
			sup := testutil.ToFloat64(h.m.suppressed[3])
			written := strings.Count(s.String(), "unparseable datagram") - strings.Count(s.String(), SummaryMessage)
			if int(sup)+written != n {
				t.Errorf("suppressed counter %v + written %d != %d", sup, written, n)
			}
			if tr := testutil.ToFloat64(h.m.truncated); int(tr) != 2*written {
				t.Errorf("truncated counter %v, want %d", tr, 2*written)
			}
			t.Logf("%d records in %s: %d lines, %d bytes, longest %d; %v suppressed", n, elapsed, lines, bytesOut, longest, sup)
		})
	}
}

// Distinct messages have budgets of their own: none of them is suppressed.
func TestDistinctMessagesNotSuppressed(t *testing.T) {
	log, h, s := newTest(t, Config{})
	new(fakeClock).use(h)
	for i := range 200 {
		for range DefaultBurst {
			log.Info(fmt.Sprintf("message %d", i))
		}
	}
	if _, lines, _ := s.size(); lines != 200*DefaultBurst {
		t.Errorf("%d lines, want %d", lines, 200*DefaultBurst)
	}
	if v := total(h); v != 0 {
		t.Errorf("suppressed %v", v)
	}
	// The same message at another level is another budget too.
	log.Warn("message 0")
	if _, lines, _ := s.size(); lines != 200*DefaultBurst+1 {
		t.Errorf("warn of an info message suppressed")
	}
}

// Suppressed records are reported: by the next record of the message
// after the interval, or by the timer when none comes.
func TestSuppressedReported(t *testing.T) {
	t.Run("next record", func(t *testing.T) {
		log, h, s := newTest(t, Config{Burst: 3, Interval: time.Minute})
		clk := &fakeClock{}
		clk.use(h)
		log = log.With("role", "sipgw")
		for range 20 {
			log.Warn("flood")
		}
		clk.now += time.Minute
		log.Warn("flood")
		out := s.String()
		if got := strings.Count(out, "msg=flood"); got != 4 {
			t.Errorf("%d records written, want 4:\n%s", got, out)
		}
		if !strings.Contains(out, `level=WARN msg="log records suppressed" role=sipgw message=flood suppressed=17 interval=1m0s`) {
			t.Errorf("no summary:\n%s", out)
		}
		if i, j := strings.Index(out, SummaryMessage), strings.LastIndex(out, "msg=flood"); i > j {
			t.Errorf("summary after the next record:\n%s", out)
		}
		if v := testutil.ToFloat64(h.m.suppressed[2]); v != 17 {
			t.Errorf("counter %v, want 17", v)
		}
	})
	t.Run("timer", func(t *testing.T) {
		log, _, s := newTest(t, Config{Burst: 2, Interval: 20 * time.Millisecond})
		for range 12 {
			log.Info("flood")
		}
		if !testkit.Eventually(5*time.Second, func() bool { return strings.Contains(s.String(), "suppressed=10") }) {
			t.Fatalf("no summary within 5s:\n%s", s.String())
		}
	})
}

// Messages built from outside input cannot grow the limiter's map: past
// maxKeys, new messages share one budget.
func TestKeysBounded(t *testing.T) {
	log, h, s := newTest(t, Config{})
	new(fakeClock).use(h)
	for i := range 3 * maxKeys {
		log.Info("bad request from " + strings.Repeat("x", i%7) + fmt.Sprint(i))
	}
	h.lim.mu.Lock()
	n := len(h.lim.windows)
	h.lim.mu.Unlock()
	if n > maxKeys+1 {
		t.Errorf("%d windows tracked", n)
	}
	if _, lines, _ := s.size(); lines > maxKeys+DefaultBurst {
		t.Errorf("%d lines", lines)
	}
}

func total(h *Handler) float64 {
	var n float64
	for _, c := range h.m.suppressed {
		n += testutil.ToFloat64(c)
	}
	return n
}

type stringer struct{ s string }

func (s stringer) String() string { return s.s }

type valuer struct{ s string }

func (v valuer) LogValue() slog.Value { return slog.StringValue(v.s) }

func TestTruncate(t *testing.T) {
	long := strings.Repeat("é", 300) // 600 bytes, two per rune
	log, h, s := newTest(t, Config{MaxValue: 101})
	log = log.With("with", long)
	log.Info(long, "s", long, "b", []byte(long), "err", errors.New(long), "str", stringer{long},
		"lv", valuer{long}, slog.Group("g", "inner", long), "short", "ok", "n", 7)
	out := s.String()
	marker := long[:100] + "…(600 bytes)"
	if got := strings.Count(out, marker); got != 8 {
		t.Errorf("%d values cut at the rune boundary, want 8:\n%s", got, out)
	}
	if strings.Contains(out, long[:102]) {
		t.Errorf("a value longer than the limit:\n%s", out)
	}
	if !strings.Contains(out, "short=ok n=7") {
		t.Errorf("short values changed:\n%s", out)
	}
	if v := testutil.ToFloat64(h.m.truncated); v != 8 {
		t.Errorf("truncated counter %v, want 8", v)
	}
	// Negative: no limit.
	log, _, s = newTest(t, Config{MaxValue: -1})
	log.Info("m", "s", long)
	if !strings.Contains(s.String(), long) {
		t.Errorf("value cut with MaxValue -1")
	}
}

// Register exposes the counters in the process's registry.
func TestRegister(t *testing.T) {
	log, _, _ := newTest(t, Config{Burst: 1, Interval: time.Hour})
	reg := prometheus.NewRegistry()
	if err := Register(log, reg); err != nil {
		t.Fatal(err)
	}
	log.Info("a")
	log.Info("a")
	log.Debug("a") // below the level: neither written nor counted
	n, err := testutil.GatherAndCount(reg, "traverse_log_suppressed_total")
	if err != nil || n != 4 {
		t.Fatalf("%d series, %v", n, err)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP traverse_log_suppressed_total Log records not written because their (level, message) was over its budget (--log-burst per --log-interval), by level.
# TYPE traverse_log_suppressed_total counter
traverse_log_suppressed_total{level="debug"} 0
traverse_log_suppressed_total{level="error"} 0
traverse_log_suppressed_total{level="info"} 1
traverse_log_suppressed_total{level="warn"} 0
`), "traverse_log_suppressed_total"); err != nil {
		t.Error(err)
	}
	if err := Register(Discard(), reg); err != nil {
		t.Errorf("discard logger: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []Config{{Level: "loud"}, {Format: "xml"}, {Interval: -time.Second}} {
		if _, err := New(&sink{}, c); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
}

// A suppressed record costs no allocation, through the logger and alike.
func TestSuppressedAllocs(t *testing.T) {
	log, _, _ := newTest(t, Config{Burst: 1, Interval: time.Hour})
	big := strings.Repeat("A", 64<<10)
	ctx := context.Background()
	log.LogAttrs(ctx, slog.LevelError, "flood", slog.String("data", big))
	if n := testing.AllocsPerRun(1000, func() {
		log.LogAttrs(ctx, slog.LevelError, "flood", slog.String("data", big), slog.Int("n", 1))
	}); n != 0 {
		t.Errorf("%v allocations per suppressed record", n)
	}
}

func BenchmarkSuppressed(b *testing.B) {
	log, _, _ := newTest(b, Config{Burst: 1, Interval: time.Hour})
	big := strings.Repeat("A", 64<<10)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		log.LogAttrs(ctx, slog.LevelError, "flood", slog.String("data", big), slog.Int("n", 1))
	}
}

// BenchmarkWritten is a record within its budget, with and without a
// value to cut, against slog's text handler alone.
func BenchmarkWritten(b *testing.B) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		v    string
	}{{"short", "hello"}, {"64KB", strings.Repeat("A", 64<<10)}} {
		b.Run("handler/"+tc.name, func(b *testing.B) {
			h := NewHandler(slog.NewTextHandler(discard{}, nil), Config{Burst: -1})
			log := slog.New(h)
			b.ReportAllocs()
			for b.Loop() {
				log.LogAttrs(ctx, slog.LevelInfo, "msg", slog.String("data", tc.v), slog.Int("n", 1))
			}
		})
		b.Run("slog/"+tc.name, func(b *testing.B) {
			log := slog.New(slog.NewTextHandler(discard{}, nil))
			b.ReportAllocs()
			for b.Loop() {
				log.LogAttrs(ctx, slog.LevelInfo, "msg", slog.String("data", tc.v), slog.Int("n", 1))
			}
		})
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// Bounded wraps a plain logger once, and leaves a bounded one alone.
func TestBounded(t *testing.T) {
	var buf bytes.Buffer
	reg := prometheus.NewRegistry()
	log := Bounded(slog.New(slog.NewTextHandler(&buf, nil)), reg)
	if _, ok := log.Handler().(*Handler); !ok {
		t.Fatalf("plain logger not wrapped: %T", log.Handler())
	}
	if derived := log.With("role", "x"); Bounded(derived, reg) != derived {
		t.Fatal("bounded logger wrapped again")
	}
	if d := slog.New(slog.DiscardHandler); Bounded(d, nil) != d {
		t.Fatal("discarding logger wrapped")
	}
	for range 3 * DefaultBurst {
		log.Warn("flood", "v", strings.Repeat("x", 10*DefaultMaxValue))
	}
	if n := bytes.Count(buf.Bytes(), []byte("\n")); n != DefaultBurst || buf.Len() > DefaultBurst*(DefaultMaxValue+100) {
		t.Fatalf("%d lines, %d bytes", n, buf.Len())
	}
	if got := testutil.ToFloat64(log.Handler().(*Handler).m.suppressed[2]); got != 2*DefaultBurst {
		t.Fatalf("suppressed %v", got)
	}
	if mfs, err := reg.Gather(); err != nil || len(mfs) == 0 {
		t.Fatalf("counters not registered: %v %v", mfs, err)
	}
}
