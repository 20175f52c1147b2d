package turn

import (
	"net/netip"
	"sync"
	"time"
)

// maxSources bounds each table of authFailures. Beyond it, new sources are
// not tracked: a flood from spoofed or many addresses cannot grow them.
// 65,536 entries are a few MB.
const maxSources = 65536

// authFailures counts failed authentications per minute, per (source, user
// name) and per source (persource.Key). A source that reaches perUser failures for one
// name has its requests for that name dropped for the rest of the minute;
// one that reaches perSource failures over all names, every request. So one
// client with a wrong password behind a NAT does not lock out the others
// behind it, and guessing many names from one source still stops.
type authFailures struct {
	perUser, perSource int // < 0: no limit

	mu     sync.Mutex // guards the maps
	byUser map[userSource]*failWindow
	bySrc  map[netip.Prefix]*failWindow
}

type userSource struct {
	src  netip.Prefix
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
		byUser: map[userSource]*failWindow{}, bySrc: map[netip.Prefix]*failWindow{}}
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
func (f *authFailures) sourceLimited(src netip.Prefix, now int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return over(f.bySrc[src], f.perSource, now)
}

// userLimited reports whether src has used up its failures for user.
func (f *authFailures) userLimited(src netip.Prefix, user string, now int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return over(f.byUser[userSource{src, keyUser(user)}], f.perUser, now)
}

func (f *authFailures) record(src netip.Prefix, user string, now int64) {
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
