package bus

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/logging"
	"github.com/traverse-rtc/traverse/internal/logging/logtest"
	"github.com/traverse-rtc/traverse/internal/metricstest"
)

// TestServerLogFlood: clients refused in a loop (no credentials) make
// nats-server log each refusal; given a plain logger, the bus bounds what
// reaches it (internal/logging's defaults: 10 lines of one level and
// message per second, values cut) and counts the rest
// (traverse_log_suppressed_total), while a role's client still connects.
func TestServerLogFlood(t *testing.T) {
	var logs logtest.Buffer
	reg := prometheus.NewRegistry()
	e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", Registerer: reg,
		Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	const flood = 200
	start := time.Now()
	for i := 0; i < flood; i++ {
		if nc, err := nats.Connect(e.URL(), nats.NoReconnect(), nats.Name(strings.Repeat("x", 1000))); err == nil {
			nc.Close()
			t.Fatal("a client without credentials connected")
		}
	}
	connectAs(t, e, RoleSignal, "")
	elapsed := time.Since(start)
	lines := logs.Lines()
	levels := 3 // nats-server logs at debug, warn and error
	if limit := levels * logging.DefaultBurst * (int(elapsed/logging.DefaultInterval) + 1); len(lines) > limit {
		t.Errorf("%d log lines for %d refused clients in %v, want at most %d", len(lines), flood, elapsed, limit)
	}
	for _, l := range lines {
		if len(l) > logging.DefaultMaxValue+300 {
			t.Errorf("log line of %d bytes: %.200s...", len(l), l)
		}
	}
	if n := metricstest.Value(t, reg, "traverse_log_suppressed_total"); n <= 0 {
		t.Errorf("suppressed log records counted: %v", n)
	}
	t.Logf("%d refused clients in %v: %d log lines, %v suppressed", flood, elapsed, len(lines), metricstest.Value(t, reg, "traverse_log_suppressed_total"))
}
