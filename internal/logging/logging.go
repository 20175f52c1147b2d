// Package logging builds the log/slog logger every role logs through.
//
// The logger cannot be flooded by outside input: its handler (Handler)
// truncates every long string, byte-slice, error and Stringer value (and the
// message) to MaxValue bytes, marked "…(N bytes)", and writes at most Burst
// records of one (level, message) per Interval; the rest are counted and
// summarised in one record per interval ("log records suppressed"). Both
// are counted in Prometheus (Register).
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of Config's limits.
const (
	// DefaultMaxValue is the default Config.MaxValue: a SIP header or a
	// STUN attribute of interest fits, a 64 KB datagram does not.
	DefaultMaxValue = 256
	// DefaultBurst and DefaultInterval: ten records of one message per
	// second, about 3 KB/s per message at DefaultMaxValue. A role that
	// legitimately logs one message more often (an access log) loses the
	// detail, not the count.
	DefaultBurst    = 10
	DefaultInterval = time.Second
)

// Config selects the log format, level and flood limits.
type Config struct {
	// Format is "text" (the default) or "json".
	Format string `yaml:"format"`
	// Level is "debug", "info" (the default), "warn" or "error".
	Level string `yaml:"level"`
	// MaxValue is the most bytes written of one string, []byte, error or
	// fmt.Stringer attribute value, and of a message; longer ones are cut
	// at a UTF-8 boundary and end in "…(N bytes)". Default 256 (0);
	// negative: no limit.
	MaxValue int `yaml:"max-value"`
	// Burst is how many records of one (level, message) are written per
	// Interval; the rest are counted, and one record per interval says how
	// many were suppressed. Default 10 (0); negative: no limit. Costs one
	// map entry per distinct message in the interval (at most 4,096).
	Burst int `yaml:"burst"`
	// Interval is the window of Burst; default 1s (0).
	Interval time.Duration `yaml:"interval"`
}

// New returns a logger writing to w through the flood-proof Handler.
func New(w io.Writer, c Config) (*slog.Logger, error) {
	var level slog.Level
	switch strings.ToLower(c.Level) {
	case "", "info":
		level = slog.LevelInfo
	case "debug":
		level = slog.LevelDebug
	case "warn", "warning":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	default:
		return nil, fmt.Errorf("logging: unknown level %q (want debug, info, warn or error)", c.Level)
	}
	if c.Interval < 0 {
		return nil, fmt.Errorf("logging: negative interval %s", c.Interval)
	}
	opts := &slog.HandlerOptions{Level: level}
	var inner slog.Handler
	switch strings.ToLower(c.Format) {
	case "", "text":
		inner = slog.NewTextHandler(w, opts)
	case "json":
		inner = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("logging: unknown format %q (want text or json)", c.Format)
	}
	return slog.New(NewHandler(inner, c)), nil
}

// Bounded returns log if it already writes through a Handler (as every
// logger of cmd/traverse does) or drops everything, and otherwise a logger
// writing to log's handler through a Handler with the default limits,
// whose counters are registered in reg when reg is not nil (a registry that
// already has them keeps the first ones). Packages that log what outside
// parties send call it on the logger they are given, so that a plain
// logger is flood-proof too and a bounded one gets no second budget.
func Bounded(log *slog.Logger, reg prometheus.Registerer) *slog.Logger {
	if _, ok := log.Handler().(*Handler); ok || log.Handler() == slog.DiscardHandler {
		return log
	}
	b := slog.New(NewHandler(log.Handler(), Config{}))
	if reg != nil {
		// An error (the registry has such counters already) leaves these
		// unexported: logging must not fail a server.
		_ = Register(b, reg)
	}
	return b
}

// Discard is a logger that drops everything, for tests.
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
