package turn

import (
	"context"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Per-source limits. A source is an IPv4 address or an IPv6 /64: one
// subscriber's IPv6 network has 2^64 addresses, and keying by address
// would let it take 2^64 shares.

// sourceOf returns the source key of ip.
func sourceOf(ip netip.Addr) netip.Addr {
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// maxSources bounds each per-source table. Beyond it, new sources share
// one overflow entry: a flood from spoofed or many addresses then limits
// itself (and, for that while, the sources it shares the entry with)
// rather than growing the table. 65,536 entries are a few MB.
const maxSources = 65536

// rateLimiter is a token bucket per source: rate events per second, at most
// burst at once.
type rateLimiter struct {
	rate  float64
	burst float64

	mu       sync.Mutex // guards the fields below
	buckets  map[netip.Addr]*tokens
	overflow tokens
}

type tokens struct {
	n    float64
	last int64 // unix nanoseconds
}

func newRateLimiter(rate float64, burst int) *rateLimiter {
	return &rateLimiter{rate: rate, burst: float64(burst), buckets: map[netip.Addr]*tokens{}}
}

// allow takes one token of src's bucket; false when it is empty. A nil
// limiter allows everything.
func (l *rateLimiter) allow(src netip.Addr, now int64) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[src]
	if b == nil {
		if len(l.buckets) >= maxSources {
			b = &l.overflow
		} else {
			b = &tokens{n: l.burst, last: now}
			l.buckets[src] = b
		}
	}
	if el := now - b.last; el > 0 {
		b.n = min(l.burst, b.n+float64(el)*l.rate/float64(time.Second))
		b.last = now
	}
	if b.n < 1 {
		return false
	}
	b.n--
	return true
}

// sweep forgets the sources whose buckets have refilled: they are as good
// as new.
func (l *rateLimiter) sweep(now int64) {
	if l == nil {
		return
	}
	full := int64(l.burst / l.rate * float64(time.Second))
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, b := range l.buckets {
		if now-b.last >= full {
			delete(l.buckets, k)
		}
	}
}

// authFailures counts failed authentications per minute, per (source, user
// name) and per source. A source that reaches perUser failures for one
// name has its requests for that name dropped for the rest of the minute;
// one that reaches perSource failures over all names, every request. So one
// client with a wrong password behind a NAT does not lock out the others
// behind it, and guessing many names from one source still stops.
type authFailures struct {
	perUser, perSource int // < 0: no limit

	mu     sync.Mutex // guards the maps
	byUser map[userSource]*failWindow
	bySrc  map[netip.Addr]*failWindow
}

type userSource struct {
	src  netip.Addr
	user string
}

type failWindow struct {
	start int64
	n     int
}

// maxKeyUser bounds the user name bytes kept per entry: names are outside
// input (up to 513 bytes, RFC 8489 section 14.3).
const maxKeyUser = 128

func newAuthFailures(perUser, perSource int) *authFailures {
	return &authFailures{perUser: perUser, perSource: perSource,
		byUser: map[userSource]*failWindow{}, bySrc: map[netip.Addr]*failWindow{}}
}

func keyUser(u string) string {
	if len(u) > maxKeyUser {
		return u[:maxKeyUser]
	}
	return u
}

func over(w *failWindow, limit int, now int64) bool {
	return limit >= 0 && w != nil && now-w.start < int64(time.Minute) && w.n >= limit
}

// sourceLimited reports whether src has used up its failures over all
// names.
func (f *authFailures) sourceLimited(src netip.Addr, now int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return over(f.bySrc[src], f.perSource, now)
}

// userLimited reports whether src has used up its failures for user.
func (f *authFailures) userLimited(src netip.Addr, user string, now int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return over(f.byUser[userSource{src, keyUser(user)}], f.perUser, now)
}

func (f *authFailures) record(src netip.Addr, user string, now int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	bump := func(w *failWindow) *failWindow {
		if w == nil || now-w.start >= int64(time.Minute) {
			w = &failWindow{start: now}
		}
		w.n++
		return w
	}
	if w := f.bySrc[src]; w != nil || len(f.bySrc) < maxSources {
		f.bySrc[src] = bump(w)
	}
	k := userSource{src, keyUser(user)}
	if w := f.byUser[k]; w != nil || len(f.byUser) < maxSources {
		f.byUser[k] = bump(w)
	}
}

// sweep forgets windows older than a minute.
func (f *authFailures) sweep(now int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, w := range f.bySrc {
		if now-w.start > int64(time.Minute) {
			delete(f.bySrc, k)
		}
	}
	for k, w := range f.byUser {
		if now-w.start > int64(time.Minute) {
			delete(f.byUser, k)
		}
	}
}

// Logs about what outside parties send (bad messages, failed
// authentications, refused peers) are sampled: at most logRate lines per
// second, bursts of logBurst, the rest counted (rate_limited_total{limit=
// "log"}); and outside strings in them are clipped to maxLogString bytes.
// Every such event is counted in full by its own counter anyway.
const (
	logRate      = 10
	logBurst     = 20
	maxLogString = 64
)

// logOutside logs an event an outside party caused, sampled.
func (s *Server) logOutside(level slog.Level, msg string, args ...any) {
	if !s.cfg.Log.Enabled(context.Background(), level) {
		return
	}
	if !s.logLimit.allow(netip.Addr{}, time.Now().UnixNano()) {
		s.m.limited.WithLabelValues("log").Inc()
		return
	}
	s.cfg.Log.Log(context.Background(), level, msg, args...)
}

// clip shortens an outside string for a log line.
func clip(v string) string {
	if len(v) <= maxLogString {
		return v
	}
	return v[:maxLogString] + "...(" + strconv.Itoa(len(v)) + " bytes)"
}
