package sipgw

import (
	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// onAck relays the ACK of a 2xx (a request of its own; ACKs of non-2xx
// stay in the transaction layer). An ACK that does not match its call is
// dropped: it could carry SDP.
func (g *Gateway) onAck(req *sip.Request, _ sip.ServerTransaction) {
	if !valid(req) {
		return
	}
	g.mu.Lock()
	c := g.calls[req.CallID().Value()]
	g.mu.Unlock()
	if c == nil {
		return
	}
	src := source(req)
	inside := g.isInside(src)
	if !c.matches(fromTag(req), toTag(req), src, req.Transport(), inside) {
		g.c.DialogMismatch.Add(1)
		return
	}
	if inside != c.callerOutside { // from the caller: the call is set up
		c.ack()
	}
	dest := c.inside
	if inside {
		dest = c.outsideAddr().String()
	}
	if len(req.Body()) > 0 && isSDP(req) {
		body, _, err := g.rewrite(c, req.Body(), inside, false)
		if err != nil {
			// Never relay SDP the gateway could not rewrite: its
			// addresses are the other side's, unchecked (a late offer
			// naming refused media addresses). The ACK still ends the
			// transaction; the session keeps its media.
			g.c.BadSDP.Add(1)
			g.log.Debug("ACK SDP not relayed", "err", err)
			body = nil
			req.RemoveHeader("Content-Type")
		}
		req.SetBody(body)
	}
	g.removeOwnRoutes(req)
	req.SetDestination(dest)
	req.SetTransport("UDP")
	if err := g.client.WriteRequest(req, g.fromListener, sipgo.ClientRequestAddVia, sipgo.ClientRequestDecreaseMaxForward); err != nil {
		g.log.Debug("relay ACK", "err", err)
	}
}

// onStrayResponse forwards responses no client transaction holds: 2xx
// retransmissions of INVITE (RFC 3261 section 16.7 step 10 forwards them
// statelessly). The top Via must be the gateway's, and the response must
// belong to a call and come from one of its parties: the gateway relays
// nothing else (it would be a reflector, and the SDP would hijack media).
func (g *Gateway) onStrayResponse(res *sip.Response) {
	v := res.Via()
	if v == nil || v.Host != g.host || v.Port != int(g.addr.Port()) || res.CallID() == nil {
		return
	}
	g.mu.Lock()
	c := g.calls[res.CallID().Value()]
	g.mu.Unlock()
	if c == nil {
		return
	}
	src := source(res)
	inside := g.isInside(src)
	from, to := fromTag(res), toTagOf(res)
	if !c.matches(from, to, src, res.Transport(), inside) && !c.matches(to, from, src, res.Transport(), inside) {
		g.c.DialogMismatch.Add(1)
		return
	}
	res.RemoveHeader("Via")
	if res.Via() == nil {
		return
	}
	if len(res.Body()) > 0 && isSDP(res) {
		body, _, err := g.rewrite(c, res.Body(), inside, false)
		if err != nil {
			// Dropped rather than relayed with the other side's
			// unchecked addresses.
			g.c.BadSDP.Add(1)
			g.log.Debug("stray response SDP not relayed", "err", err)
			return
		}
		res.SetBody(body)
	}
	res.SetDestination("")
	if err := g.srv.WriteResponse(res); err != nil {
		g.log.Debug("stray response", "err", err)
	}
}
