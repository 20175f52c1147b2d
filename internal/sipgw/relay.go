package sipgw

import (
	"net/netip"

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
	c, src, inside := g.sentFor(req.CallID().Value(), req)
	if c == nil {
		return
	}
	if !c.matches(fromTag(req), toTag(req), src, req.Transport(), inside) {
		g.c.DialogMismatch.Add(1)
		return
	}
	if inside != c.callerOutside { // from the caller: the call is set up
		c.ack()
	}
	dest := c.peerOf(inside)
	if !g.rewriteRelayed(c, req, inside, "ACK") {
		// A late offer naming refused media addresses: the ACK still
		// ends the transaction, without it; the session keeps its media.
		req.RemoveHeader("Content-Type")
		req.SetBody(nil)
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
	c, src, inside := g.sentFor(res.CallID().Value(), res)
	if c == nil {
		return
	}
	from, to := fromTag(res), toTagOf(res)
	if !c.matches(from, to, src, res.Transport(), inside) && !c.matches(to, from, src, res.Transport(), inside) {
		g.c.DialogMismatch.Add(1)
		return
	}
	res.RemoveHeader("Via")
	if res.Via() == nil {
		return
	}
	if !g.rewriteRelayed(c, res, inside, "stray response") {
		return // dropped rather than relayed with unchecked addresses
	}
	res.SetDestination("")
	if err := g.srv.WriteResponse(res); err != nil {
		g.log.Debug("stray response", "err", err)
	}
}

// sdpMessage is a SIP request or response with a body.
type sdpMessage interface {
	headerGetter
	Body() []byte
	SetBody([]byte)
}

// rewriteRelayed rewrites the SDP of a message relayed outside any
// transaction (an ACK, a stray 2xx). It reports false, leaving m alone,
// when the SDP could not be rewritten: such SDP is never relayed, for its
// addresses are the other side's, unchecked.
func (g *Gateway) rewriteRelayed(c *call, m sdpMessage, inside bool, what string) bool {
	if len(m.Body()) == 0 || !isSDP(m) {
		return true
	}
	body, _, err := g.rewrite(c, m.Body(), inside, false)
	if err != nil {
		g.c.BadSDP.Add(1)
		g.log.Debug(what+" SDP not relayed", "err", err)
		return false
	}
	m.SetBody(body)
	return true
}

// sentFor finds the call of a message relayed outside any transaction, and
// where the message comes from (its source and side). A nil call: none
// holds that Call-ID.
func (g *Gateway) sentFor(callID string, m interface{ Source() string }) (*call, netip.AddrPort, bool) {
	c := g.callByID(callID)
	if c == nil {
		return nil, netip.AddrPort{}, false
	}
	src := source(m)
	return c, src, g.isInside(src)
}
