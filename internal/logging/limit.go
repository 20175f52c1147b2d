package logging

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"
)

const (
	// maxKeys bounds the messages tracked at once. Messages are mostly
	// constants of the code, but one built from outside input must not
	// grow the map: over maxKeys, new messages of a level share one
	// budget (overflowMsg).
	maxKeys = 4096
	// maxKeyLen is how much of a message identifies it.
	maxKeyLen   = DefaultMaxValue
	overflowMsg = "(other messages)"
	// SummaryMessage is the message of the record that reports suppressed
	// records; its attributes are "message" (the suppressed records'
	// message), "suppressed" (how many) and "interval".
	SummaryMessage = "log records suppressed"
)

type key struct {
	level slog.Level
	msg   string
}

// window is one message's budget in the current interval.
type window struct {
	start      time.Duration // on the limiter's clock
	n          int           // written in this window
	suppressed int
	inner      slog.Handler // writes the summary (with the attributes of the last suppressed record's logger)
}

// summary is a record to write about suppressed ones.
type summary struct {
	inner slog.Handler
	level slog.Level
	msg   string
	n     int
}

type limiter struct {
	burst    int
	interval time.Duration
	clock    func() time.Duration // monotonic; replaced in tests
	m        *metrics

	mu       sync.Mutex // guards windows, timer and armed
	windows  map[key]*window
	timer    *time.Timer // flushes summaries when no record of the message follows
	armed    bool
	noTimers bool // tests drive flush by hand
}

func newLimiter(burst int, interval time.Duration, m *metrics) *limiter {
	start := time.Now()
	return &limiter{burst: burst, interval: interval, m: m, windows: map[key]*window{},
		clock: func() time.Duration { return time.Since(start) }}
}

// allow reports whether a record of (level, msg), to be written through
// inner, is within its budget. When the message's previous window ended
// with suppressed records, it also returns their summary, to be written
// before the record.
func (l *limiter) allow(inner slog.Handler, level slog.Level, msg string) (bool, summary) {
	if len(msg) > maxKeyLen {
		msg = msg[:maxKeyLen]
	}
	k := key{level, msg}
	now := l.clock()
	var s summary
	l.mu.Lock()
	w := l.windows[k]
	if w == nil {
		w = l.addLocked(k, now)
	}
	if now-w.start >= l.interval {
		if w.suppressed > 0 {
			s = summary{inner: w.inner, level: level, msg: k.msg, n: w.suppressed}
		}
		w.start, w.n, w.suppressed, w.inner = now, 0, 0, nil
	}
	ok := w.n < l.burst
	if ok {
		w.n++
	} else {
		w.suppressed++
		w.inner = inner
		if !l.armed && !l.noTimers {
			l.armed = true
			d := w.start + l.interval - now
			if l.timer == nil {
				l.timer = time.AfterFunc(d, l.flush)
			} else {
				l.timer.Reset(d)
			}
		}
	}
	l.mu.Unlock()
	if !ok {
		l.m.suppressed[levelIndex(level)].Inc()
	}
	return ok, s
}

// addLocked starts tracking k, first forgetting windows that ended
// without suppressing anything when the map is full.
func (l *limiter) addLocked(k key, now time.Duration) *window {
	if len(l.windows) >= maxKeys {
		for ok, w := range l.windows {
			if w.suppressed == 0 && now-w.start >= l.interval {
				delete(l.windows, ok)
			}
		}
	}
	if len(l.windows) >= maxKeys {
		k.msg = overflowMsg
		if w := l.windows[k]; w != nil {
			return w
		}
	}
	k.msg = strings.Clone(k.msg) // do not pin a large message's backing array
	w := &window{start: now}
	l.windows[k] = w
	return w
}

// flush writes the summaries of windows that ended with suppressed records
// and forgets ended windows; it re-arms itself for windows still open.
func (l *limiter) flush() {
	now := l.clock()
	var out []summary
	l.mu.Lock()
	l.armed = false
	next := time.Duration(-1)
	for k, w := range l.windows {
		end := w.start + l.interval
		if now >= end {
			if w.suppressed > 0 {
				out = append(out, summary{inner: w.inner, level: k.level, msg: k.msg, n: w.suppressed})
			}
			delete(l.windows, k)
			continue
		}
		if w.suppressed > 0 && (next < 0 || end-now < next) {
			next = end - now
		}
	}
	if next >= 0 && !l.noTimers {
		l.armed = true
		l.timer.Reset(next)
	}
	l.mu.Unlock()
	for _, s := range out {
		l.write(context.Background(), s)
	}
}

// write logs s through the handler of the suppressed records, at their
// level, bypassing the limit.
func (l *limiter) write(ctx context.Context, s summary) {
	r := slog.NewRecord(time.Now(), s.level, SummaryMessage, 0)
	r.AddAttrs(slog.String("message", s.msg), slog.Int("suppressed", s.n), slog.Duration("interval", l.interval))
	_ = s.inner.Handle(ctx, r)
}
