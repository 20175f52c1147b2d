package sipgw

import (
	"errors"
	"net/netip"

	"github.com/emiago/sipgo/sip"

	"github.com/traverse-rtc/traverse/internal/mediaproxy"
	"github.com/traverse-rtc/traverse/internal/persource"
)

func (g *Gateway) onStrayCancel(req *sip.Request, tx sip.ServerTransaction) {
	g.reject(tx, req, 481, "Call/Transaction Does Not Exist", &g.c.NoDialog)
}

// onRequest handles INVITE (initial and re-), BYE, UPDATE and every other
// request that is not REGISTER, ACK or a matched CANCEL.
func (g *Gateway) onRequest(req *sip.Request, tx sip.ServerTransaction) {
	g.c.Requests.Add(1)
	if !valid(req) {
		g.reject(tx, req, 400, "Bad Request", &g.c.BadRequest)
		return
	}
	if mf := req.MaxForwards(); mf != nil && mf.Val() == 0 {
		g.reject(tx, req, 483, "Too Many Hops", &g.c.TooManyHops)
		return
	}
	// The server transaction keeps reading the request it was given: the
	// gateway rewrites a copy.
	orig := req
	req = req.Clone()
	src := source(req)
	inside := g.isInside(src)

	c := g.callByID(req.CallID().Value())
	switch {
	case c != nil:
		// Whatever it claims, a request carrying a call's Call-ID is that
		// call's only when it carries both tags and comes from the party
		// (issue 10: a made-up To-tag from elsewhere re-pointed media and
		// ended calls).
		if !c.matches(fromTag(req), toTag(req), src, orig.Transport(), inside) {
			g.reject(tx, orig, 481, "Call/Transaction Does Not Exist", &g.c.DialogMismatch)
			return
		}
		g.inDialog(orig, req, tx, c, inside)
	case toTag(req) != "":
		g.reject(tx, orig, 481, "Call/Transaction Does Not Exist", &g.c.NoDialog)
	default:
		g.outOfDialog(orig, req, tx, src, inside)
	}
}

// outOfDialog routes a request outside any call: an initial INVITE (a new
// call) or a stand-alone request (OPTIONS, MESSAGE...).
func (g *Gateway) outOfDialog(orig, req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort, inside bool) {
	if !inside && !g.requests.Allow(src.Addr()) {
		g.reject(tx, orig, 503, "Service Unavailable", &g.c.RateLimited, sip.NewHeader("Retry-After", "5"))
		return
	}
	var dest string
	if inside {
		b := g.lookup(req.Recipient.User)
		if b == nil {
			g.reject(tx, orig, 404, "Not Found", &g.c.NotFound)
			return
		}
		req.Recipient = *b.contact.Clone()
		dest = b.src
	} else {
		dest = g.upstream.String()
	}
	if !req.IsInvite() {
		g.forward(orig, req, tx, route{dest: dest, fromInside: inside})
		return
	}
	if !inside && !g.newCalls.Allow(src.Addr()) {
		g.reject(tx, orig, 503, "Service Unavailable", &g.c.CallRateLimited, sip.NewHeader("Retry-After", "5"))
		return
	}
	id := req.CallID().Value()
	var c *call
	if inside {
		out, _ := netip.ParseAddrPort(dest)
		c = newCall(id, false, out, "UDP", src.String(), fromTag(req))
	} else {
		c = newCall(id, true, src, orig.Transport(), g.upstream.String(), fromTag(req))
		c.share = persource.Key(src.Addr())
	}
	g.mu.Lock()
	taken := g.calls[id] != nil
	if !taken {
		g.calls[id] = c
	}
	g.mu.Unlock()
	if taken { // two INVITEs racing for one Call-ID: the first has it
		g.reject(tx, orig, 481, "Call/Transaction Does Not Exist", &g.c.DialogMismatch)
		return
	}
	if len(req.Body()) > 0 && isSDP(req) {
		body, _, err := g.rewrite(c, req.Body(), inside, false)
		if err != nil {
			g.release(c)
			g.rejectMedia(tx, orig, err)
			return
		}
		req.SetBody(body)
	}
	g.c.CallsStarted.Add(1)
	g.armTimer(c, g.cfg.SetupTimeout)
	g.forward(orig, req, tx, route{dest: dest, call: c, fromInside: inside, newCall: true})
}

// rejectMedia answers a request whose SDP the media proxy could not take.
func (g *Gateway) rejectMedia(tx sip.ServerTransaction, req *sip.Request, err error) {
	switch {
	case errors.Is(err, mediaproxy.ErrNoPorts):
		g.reject(tx, req, 503, "Service Unavailable", &g.c.NoMedia, sip.NewHeader("Retry-After", "10"))
	case errors.Is(err, ErrSourceStreams):
		g.reject(tx, req, 503, "Service Unavailable", &g.c.SourceStreams, sip.NewHeader("Retry-After", "10"))
	default:
		g.reject(tx, req, 488, "Not Acceptable Here", &g.c.BadSDP)
	}
}

// inDialog relays a request that matched its call. An SDP offer in it is
// staged: the streams it needs are allocated (their ports go into the
// relayed SDP) but nothing is re-pointed before the other side's 2xx.
func (g *Gateway) inDialog(orig, req *sip.Request, tx sip.ServerTransaction, c *call, inside bool) {
	dest := c.peerOf(inside)
	var of *offer
	if len(req.Body()) > 0 && isSDP(req) {
		c.mu.Lock()
		busy := c.pending != nil
		if !busy {
			c.pending = &offer{}
		}
		c.mu.Unlock()
		if busy { // RFC 3261 section 14.2 (and RFC 3311 for UPDATE)
			g.reject(tx, orig, 491, "Request Pending", &g.c.Pending)
			return
		}
		body, o, err := g.rewrite(c, req.Body(), inside, true)
		if err != nil {
			c.mu.Lock()
			c.pending = nil
			c.mu.Unlock()
			g.rejectMedia(tx, orig, err)
			return
		}
		c.mu.Lock()
		c.pending = o
		c.mu.Unlock()
		req.SetBody(body)
		of = o
	}
	g.forward(orig, req, tx, route{dest: dest, call: c, fromInside: inside, offer: of})
}
