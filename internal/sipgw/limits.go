package sipgw

import (
	"net/netip"
	"sync/atomic"

	"github.com/emiago/sipgo/sip"

	"github.com/traverse-rtc/traverse/internal/persource"
)

// reserve counts n more inside streams against share (a persource.Key); false (and nothing
// counted) when that would take the share past Config.SourceStreams.
// Calls from inside have no share and are not limited.
func (g *Gateway) reserve(share netip.Prefix, n int) bool {
	if n <= 0 || !share.IsValid() {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.shares.Take(share, n, g.cfg.SourceStreams)
}

func (g *Gateway) unreserve(share netip.Prefix, n int) {
	if n <= 0 || !share.IsValid() {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.shares.Give(share, n)
}

// SourceStreams returns the inside streams held by calls from src's share
// (its IPv4 address or IPv6 /64).
func (g *Gateway) SourceStreams(src netip.Addr) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.shares.Get(persource.Key(src))
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
	if !g.isInside(src) && !g.answers.Allow(src.Addr()) {
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
