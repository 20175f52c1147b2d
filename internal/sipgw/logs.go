package sipgw

import (
	"context"
	"errors"
	"log/slog"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/logging"
)

// Logs. sipgo logs every datagram it cannot parse at ERROR with its full
// text (issue 10: one 64 KB datagram made one 131 KB line, a fuzz run
// 60 MB), and outside parties choose what the gateway's own warnings
// quote. Every record the gateway and its sipgo layers write goes through
// logHandler, which counts unparseable datagrams by reason and logs them at
// WARN, and then through internal/logging's flood-proof Handler (the
// process's, or one of its own: logging.Bounded), which cuts long values
// and samples each message.

// Reasons an incoming message did not parse, as counted in
// Counters.Unparseable and traverse_sipgw_unparseable_total{reason}.
const (
	unparseTooLarge  = iota // over sipgo's ParseMaxMessageLength
	unparseTruncated        // a line without CRLF, or the data ended in a line
	unparsePartial          // the body is shorter than Content-Length
	unparseMalformed        // anything else: start line, headers
	numUnparse
)

var unparseNames = [numUnparse]string{"too_large", "truncated", "partial", "malformed"}

// parseFailureMsg is the message sipgo's UDP and TCP transports log a
// datagram (or stream chunk) that did not parse with; TestGarbageFlood
// fails if sipgo changes it.
const parseFailureMsg = "failed to parse"

func unparseReason(err error) int {
	switch {
	case errors.Is(err, sip.ErrMessageTooLarge):
		return unparseTooLarge
	case errors.Is(err, sip.ErrParseLineNoCRLF), errors.Is(err, sip.ErrParseEOF):
		return unparseTruncated
	case errors.Is(err, sip.ErrParseSipPartial), errors.Is(err, sip.ErrParseReadBodyIncomplete):
		return unparsePartial
	}
	return unparseMalformed
}

// logHandler counts the parse failures sipgo logs, by reason, and demotes
// them to WARN (the sender's fault, not the gateway's); inner (a
// logging.Handler) bounds what is written.
type logHandler struct {
	inner slog.Handler
	c     *Counters
}

// newLogger returns the gateway's logger: log's records through logHandler
// and a flood-proof logging.Handler (log's own if it has one; else a new
// one whose counters are registered in reg).
func newLogger(log *slog.Logger, c *Counters, reg prometheus.Registerer) *slog.Logger {
	return slog.New(&logHandler{inner: logging.Bounded(log, reg).Handler(), c: c})
}

// Enabled is true for errors even when the inner handler drops them: parse
// failures must be counted however little is logged.
func (h *logHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError || h.inner.Enabled(ctx, l)
}

func (h *logHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == parseFailureMsg {
		reason := unparseMalformed
		r.Attrs(func(a slog.Attr) bool {
			if err, ok := a.Value.Any().(error); ok {
				reason = unparseReason(err)
			}
			return true
		})
		h.c.Unparseable[reason].Add(1)
		r.Level = slog.LevelWarn
	}
	if !h.inner.Enabled(ctx, r.Level) {
		return nil
	}
	return h.inner.Handle(ctx, r)
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &logHandler{inner: h.inner.WithAttrs(as), c: h.c}
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	return &logHandler{inner: h.inner.WithGroup(name), c: h.c}
}
