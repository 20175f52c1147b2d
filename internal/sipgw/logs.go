package sipgw

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Log flood limits. sipgo logs every datagram it cannot parse at ERROR with
// its full text (issue 10: one 64 KB datagram made one 131 KB line, a fuzz
// run 60 MB), and outside parties choose what the gateway's own warnings
// quote. Every record the gateway and its sipgo layers write goes through
// logHandler, which counts unparseable datagrams by reason, passes at most
// logBurst records of one message per logWindow (saying how many it
// dropped), and cuts every string to maxLogBytes, quoted.
const (
	maxLogBytes = 200
	logBurst    = 5
	logWindow   = 10 * time.Second
	// maxLogKeys bounds the messages sampled apart; past it, the table is
	// reset (sipgo's messages are constants, so this is a safety net).
	maxLogKeys = 256
)

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

// trunc cuts s to maxLogBytes and quotes it, so that what an outside party
// wrote reaches a log line bounded and printable.
func trunc(s string) string {
	if len(s) <= maxLogBytes {
		return strconv.Quote(s)
	}
	return strconv.Quote(s[:maxLogBytes]) + fmt.Sprintf("... (%d bytes)", len(s))
}

// logSampler is the state the handler and its WithAttrs/WithGroup
// children share.
type logSampler struct {
	c *Counters

	mu         sync.Mutex // guards window, seen, suppressed
	window     time.Time
	seen       map[string]int // records per message in this window
	suppressed map[string]int // records dropped per message since the last one passed
}

// allow says whether a record with this message may pass now, and how many
// of its kind were dropped since the last that did.
func (s *logSampler) allow(msg string, now time.Time) (bool, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.window) >= logWindow || len(s.seen) >= maxLogKeys {
		s.window, s.seen = now, map[string]int{}
		if len(s.suppressed) >= maxLogKeys {
			s.suppressed = map[string]int{}
		}
	}
	if s.seen[msg] >= logBurst {
		s.suppressed[msg]++
		return false, 0
	}
	s.seen[msg]++
	n := s.suppressed[msg]
	delete(s.suppressed, msg)
	return true, n
}

type logHandler struct {
	inner slog.Handler
	s     *logSampler
}

func newLogHandler(inner slog.Handler, c *Counters) *logHandler {
	return &logHandler{inner: inner, s: &logSampler{c: c, seen: map[string]int{}, suppressed: map[string]int{}}}
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
		h.s.c.Unparseable[reason].Add(1)
		r.Level = slog.LevelWarn // the sender's fault, not the gateway's
	}
	if !h.inner.Enabled(ctx, r.Level) {
		return nil
	}
	var dropped int
	if r.Level >= slog.LevelWarn {
		ok, n := h.s.allow(r.Message, r.Time)
		if !ok {
			h.s.c.LogsSuppressed.Add(1)
			return nil
		}
		dropped = n
	}
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(bound(a))
		return true
	})
	if dropped > 0 {
		out.AddAttrs(slog.Int("suppressed", dropped))
	}
	return h.inner.Handle(ctx, out)
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	b := make([]slog.Attr, len(as))
	for i, a := range as {
		b[i] = bound(a)
	}
	return &logHandler{inner: h.inner.WithAttrs(b), s: h.s}
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	return &logHandler{inner: h.inner.WithGroup(name), s: h.s}
}

// bound cuts every string an attribute holds (errors and Stringers too)
// to maxLogBytes, quoted.
func bound(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		if s := v.String(); len(s) > maxLogBytes || a.Key == "data" {
			return slog.String(a.Key, trunc(s))
		}
	case slog.KindGroup:
		g := v.Group()
		b := make([]any, len(g))
		for i, x := range g {
			b[i] = bound(x)
		}
		return slog.Group(a.Key, b...)
	case slog.KindAny:
		var s string
		switch x := v.Any().(type) {
		case error:
			s = x.Error()
		case fmt.Stringer:
			s = x.String()
		case []byte:
			return slog.String(a.Key, trunc(string(x)))
		default:
			s = fmt.Sprint(x)
		}
		if len(s) > maxLogBytes {
			return slog.String(a.Key, trunc(s))
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}
