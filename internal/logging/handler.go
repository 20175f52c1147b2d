package logging

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"unicode/utf8"
)

// Handler wraps another slog.Handler so that outside input cannot flood the
// log: long values are cut (Config.MaxValue) and each (level, message) is
// rate-limited (Config.Burst per Config.Interval). Handlers derived with
// WithAttrs and WithGroup share the parent's limiter and counters, so a
// logger made per connection (log.With("conn", ...)) does not get a budget
// of its own.
type Handler struct {
	inner    slog.Handler
	maxValue int      // < 0: no limit
	lim      *limiter // nil: no rate limit
	m        *metrics
}

// NewHandler wraps inner with c's limits (MaxValue, Burst, Interval; the
// zero values select the defaults). Format and Level are inner's business.
func NewHandler(inner slog.Handler, c Config) *Handler {
	h := &Handler{inner: inner, maxValue: c.MaxValue, m: newMetrics()}
	if h.maxValue == 0 {
		h.maxValue = DefaultMaxValue
	}
	burst, iv := c.Burst, c.Interval
	if burst == 0 {
		burst = DefaultBurst
	}
	if iv <= 0 {
		iv = DefaultInterval
	}
	if burst > 0 {
		h.lim = newLimiter(burst, iv, h.m)
	}
	return h
}

// Enabled reports whether the wrapped handler logs level.
func (h *Handler) Enabled(ctx context.Context, l slog.Level) bool { return h.inner.Enabled(ctx, l) }

// Handle writes r unless its (level, message) is over its budget; long
// values are cut first. A suppressed record costs a map look-up under a
// mutex and a counter increment, and allocates nothing.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	if h.lim != nil {
		ok, sum := h.lim.allow(h.inner, r.Level, r.Message)
		if sum.n > 0 {
			h.lim.write(ctx, sum)
		}
		if !ok {
			return nil
		}
	}
	if h.maxValue >= 0 && h.tooLong(r) {
		r = h.cut(r)
	}
	return h.inner.Handle(ctx, r)
}

// WithAttrs cuts attrs once, here, rather than on every record.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if h.maxValue >= 0 && slices.ContainsFunc(attrs, func(a slog.Attr) bool { return h.valueTooLong(a.Value) }) {
		cut := make([]slog.Attr, len(attrs))
		for i, a := range attrs {
			cut[i] = h.cutAttr(a)
		}
		attrs = cut
	}
	c := *h
	c.inner = h.inner.WithAttrs(attrs)
	return &c
}

// WithGroup returns a handler that qualifies later attributes with name.
func (h *Handler) WithGroup(name string) slog.Handler {
	c := *h
	c.inner = h.inner.WithGroup(name)
	return &c
}

func (h *Handler) tooLong(r slog.Record) bool {
	if len(r.Message) > h.maxValue {
		return true
	}
	long := false
	r.Attrs(func(a slog.Attr) bool {
		long = h.valueTooLong(a.Value)
		return !long
	})
	return long
}

func (h *Handler) valueTooLong(v slog.Value) bool {
	switch v.Kind() {
	case slog.KindString:
		return len(v.String()) > h.maxValue
	case slog.KindGroup:
		for _, a := range v.Group() {
			if h.valueTooLong(a.Value) {
				return true
			}
		}
	case slog.KindLogValuer:
		return h.valueTooLong(v.Resolve())
	case slog.KindAny:
		switch x := v.Any().(type) {
		case []byte:
			return len(x) > h.maxValue
		case error:
			return len(x.Error()) > h.maxValue
		case fmt.Stringer:
			return len(x.String()) > h.maxValue
		}
	}
	return false
}

// cut returns a copy of r with every long value cut.
func (h *Handler) cut(r slog.Record) slog.Record {
	msg := r.Message
	if len(msg) > h.maxValue {
		msg = h.cutString(msg)
	}
	nr := slog.NewRecord(r.Time, r.Level, msg, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		nr.AddAttrs(h.cutAttr(a))
		return true
	})
	return nr
}

func (h *Handler) cutAttr(a slog.Attr) slog.Attr {
	if h.maxValue < 0 || !h.valueTooLong(a.Value) {
		return a
	}
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, h.cutString(v.String()))
	case slog.KindGroup:
		g := v.Group()
		ng := make([]slog.Attr, len(g))
		for i, ga := range g {
			ng[i] = h.cutAttr(ga)
		}
		return slog.Attr{Key: a.Key, Value: slog.GroupValue(ng...)}
	case slog.KindAny:
		switch x := v.Any().(type) {
		case []byte:
			return slog.String(a.Key, h.cutBytes(x))
		case error:
			return slog.String(a.Key, h.cutString(x.Error()))
		case fmt.Stringer:
			return slog.String(a.Key, h.cutString(x.String()))
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}

// cutString keeps the first maxValue bytes of s (fewer, to end on a rune
// boundary) and says how long s was.
func (h *Handler) cutString(s string) string {
	h.m.truncated.Inc()
	i := h.maxValue
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…(" + strconv.Itoa(len(s)) + " bytes)"
}

// cutBytes is cutString for a byte slice, without copying all of it.
func (h *Handler) cutBytes(b []byte) string {
	h.m.truncated.Inc()
	i := h.maxValue
	for i > 0 && !utf8.RuneStart(b[i]) {
		i--
	}
	return string(b[:i]) + "…(" + strconv.Itoa(len(b)) + " bytes)"
}
