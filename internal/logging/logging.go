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

// Discard is a logger that drops everything, for tests.
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
