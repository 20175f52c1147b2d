package sipgw

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"golang.org/x/time/rate"
)

// maxTrackedSources bounds each per-source table; when it is full, entries
// idle for a minute are swept (at most once a second: a sweep is O(n)), and
// if none is, an arbitrary one makes room. A flood from spoofed sources
// thus costs bounded memory; what it costs in fairness is that an evicted
// source starts again with a full bucket.
const maxTrackedSources = 4096

// shareKey is the unit every per-source limit counts by: an IPv4 address,
// or the /64 of an IPv6 one (a single subscriber usually holds a whole
// /64, so counting by address would give it 2^64 shares).
func shareKey(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

// limiterSet is one token bucket per source.
type limiterSet struct {
	rate  rate.Limit
	burst int

	mu    sync.Mutex // guards m, swept
	m     map[netip.Prefix]*limiter
	swept time.Time
}

type limiter struct {
	l    *rate.Limiter
	seen time.Time
}

func newLimiterSet(perSecond float64, burst int) *limiterSet {
	return &limiterSet{rate: rate.Limit(perSecond), burst: burst, m: map[netip.Prefix]*limiter{}}
}

// allow takes one token from a's bucket.
func (s *limiterSet) allow(a netip.Addr) bool {
	k := shareKey(a)
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.m[k]
	if l == nil {
		if len(s.m) >= maxTrackedSources && now.Sub(s.swept) >= time.Second {
			s.swept = now
			for p, x := range s.m {
				if now.Sub(x.seen) > time.Minute {
					delete(s.m, p)
				}
			}
		}
		for p := range s.m {
			if len(s.m) < maxTrackedSources {
				break
			}
			delete(s.m, p)
		}
		l = &limiter{l: rate.NewLimiter(s.rate, s.burst)}
		s.m[k] = l
	}
	l.seen = now
	return l.l.AllowN(now, 1)
}

// reserve counts n more inside streams against share; false (and nothing
// counted) when that would take the share past Config.SourceStreams.
// Calls from inside have no share and are not limited.
func (g *Gateway) reserve(share netip.Prefix, n int) bool {
	if n <= 0 || !share.IsValid() {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.shares[share]+n > g.cfg.SourceStreams {
		return false
	}
	g.shares[share] += n
	return true
}

func (g *Gateway) unreserve(share netip.Prefix, n int) {
	if n <= 0 || !share.IsValid() {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.shares[share] -= n; g.shares[share] <= 0 {
		delete(g.shares, share)
	}
}

// SourceStreams returns the inside streams held by calls from src's share
// (its IPv4 address or IPv6 /64).
func (g *Gateway) SourceStreams(src netip.Addr) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.shares[shareKey(src)]
}

// reject answers a request the gateway refuses by itself (400, 481, 483,
// 488, 491, 503...). ctr counts the refusal whether or not it is answered.
//
// The answer goes out once. An error answer to an INVITE would otherwise
// be retransmitted by the INVITE server transaction (Timer G, RFC 3261
// section 17.2.1) until an ACK comes: 11 datagrams over 32 s for a request
// that a spoofer never ACKs. A real client whose copy is lost retransmits
// its INVITE and is answered again. Answers to an outside source are also
// limited per source (Config.AnswerRate); beyond it the request is dropped
// in silence and counted.
func (g *Gateway) reject(tx sip.ServerTransaction, req *sip.Request, code int, reason string, ctr *atomic.Uint64, hdrs ...sip.Header) {
	if ctr != nil {
		ctr.Add(1)
	}
	src := source(req)
	if !g.isInside(src) && !g.answers.allow(src.Addr()) {
		g.c.AnswersSuppressed.Add(1)
		tx.Terminate()
		return
	}
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	for _, h := range hdrs {
		res.AppendHeader(h)
	}
	g.c.Rejected.Add(1)
	g.respond(tx, req, res)
}

// respond sends res on tx; an error final to an INVITE goes out once,
// without Timer G (see reject), and ends the transaction.
func (g *Gateway) respond(tx sip.ServerTransaction, req *sip.Request, res *sip.Response) {
	if cx, ok := tx.(interface{ Connection() sip.Connection }); ok && req.IsInvite() && res.StatusCode >= 300 {
		if err := cx.Connection().WriteMsg(res); err != nil {
			g.log.Debug("respond", "code", res.StatusCode, "err", err)
		}
		tx.Terminate()
		return
	}
	if err := tx.Respond(res); err != nil {
		g.log.Debug("respond", "code", res.StatusCode, "err", err)
	}
}
