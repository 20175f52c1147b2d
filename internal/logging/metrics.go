package logging

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are one handler's counters (shared with the handlers derived
// from it), registered by Register in the process's registry.
type metrics struct {
	suppressedVec *prometheus.CounterVec
	suppressed    [4]prometheus.Counter // debug, info, warn, error (levelIndex)
	truncated     prometheus.Counter
}

var levelNames = [4]string{"debug", "info", "warn", "error"}

func newMetrics() *metrics {
	m := &metrics{
		suppressedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "traverse_log_suppressed_total",
			Help: "Log records not written because their (level, message) was over its budget (--log-burst per --log-interval), by level.",
		}, []string{"level"}),
		truncated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "traverse_log_truncated_total",
			Help: "Log values (and messages) cut to --log-max-value bytes.",
		}),
	}
	for i, n := range levelNames {
		m.suppressed[i] = m.suppressedVec.WithLabelValues(n)
	}
	return m
}

// levelIndex maps a level to its counter: custom levels count with the
// standard level at or below them.
func levelIndex(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return 3
	case l >= slog.LevelWarn:
		return 2
	case l >= slog.LevelInfo:
		return 1
	}
	return 0
}

// Register registers the counters of log's Handler in reg. A logger that
// does not log through a Handler has none, and Register does nothing.
func Register(log *slog.Logger, reg prometheus.Registerer) error {
	h, ok := log.Handler().(*Handler)
	if !ok {
		return nil
	}
	for _, c := range []prometheus.Collector{h.m.suppressedVec, h.m.truncated} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
