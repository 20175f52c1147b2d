package sipgw

import (
	"context"
	"net"
	"strings"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// route is where and how forward relays one request.
type route struct {
	dest       string // the next hop, "ip:port"
	call       *call  // the call the request belongs to (nil: none)
	fromInside bool   // the request came from the inside side
	newCall    bool   // the request is the INVITE that makes call
	// offer is the staged offer the request carries, committed on a 2xx
	// and discarded on anything else (nil: none, or already settled).
	offer *offer
}

// settle commits (ok) or discards the route's staged offer, once.
func (g *Gateway) settle(rt *route, ok bool) {
	if rt.offer == nil {
		return
	}
	if ok {
		g.commit(rt.call, rt.offer)
	} else {
		g.discard(rt.call, rt.offer)
	}
	rt.offer = nil
}

// forward relays req along rt in a client transaction and relays the
// responses back, rewriting their SDP (relayResponse).
func (g *Gateway) forward(orig, req *sip.Request, tx sip.ServerTransaction, rt route) {
	defer g.settle(&rt, false)
	c := rt.call
	g.removeOwnRoutes(req)
	req.SetDestination(rt.dest)
	// The gateway speaks UDP to both sides whatever the client used.
	req.SetTransport("UDP")
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.TransactionTimeout)
	defer cancel()
	clTx, err := g.client.TransactionRequest(ctx, req, g.forwardOptions(orig, req, rt)...)
	if err != nil {
		g.log.Debug("forward", "err", err, "dest", rt.dest)
		if rt.newCall {
			g.endCall(c)
		}
		g.reply(tx, orig, 503, "Service Unavailable")
		return
	}
	defer clTx.Terminate()
	var expired <-chan struct{}
	if req.IsInvite() {
		fwd := req
		tx.OnCancel(func(*sip.Request) {
			g.spawn(func(ctx context.Context) { g.sendCancel(ctx, fwd) })
		})
		if rt.newCall {
			expired = c.expired
		}
	}
	for {
		select {
		case res, ok := <-clTx.Responses():
			if !ok || g.relayResponse(orig, req, tx, &rt, res) {
				return
			}
		case <-expired:
			// Not answered within the setup deadline: give the ports back
			// now and CANCEL upstream; the 487 goes to the caller.
			expired = nil
			g.c.SetupTimeouts.Add(1)
			g.endCall(c)
			g.spawn(func(ctx context.Context) { g.sendCancel(ctx, req) })
		case <-clTx.Done():
			if rt.newCall {
				g.endCall(c)
			}
			if err := clTx.Err(); err != nil && !req.IsInvite() {
				g.reply(tx, orig, 408, "Request Timeout")
			}
			return
		case <-tx.Done():
			if req.IsInvite() {
				// Cancelled or timed out on the caller's side; let the
				// client transaction finish (the 487 comes back).
				select {
				case <-clTx.Done():
				case <-ctx.Done():
				}
				if rt.newCall && tx.Err() != nil {
					g.endCall(c)
				}
			}
			return
		}
	}
}

// forwardOptions are the client request options of a forwarded request:
// from the listener, with the gateway's Via, and for a new call its
// Record-Route.
func (g *Gateway) forwardOptions(orig, req *sip.Request, rt route) []sipgo.ClientRequestOption {
	opts := []sipgo.ClientRequestOption{g.fromListener, sipgo.ClientRequestAddVia, sipgo.ClientRequestDecreaseMaxForward}
	if !rt.newCall {
		return opts
	}
	// A client on TCP or TLS gets its own Record-Route below the UDP one
	// (double Record-Route, RFC 5658): the inside side routes its
	// in-dialog requests to the top entry, the client to the bottom one.
	if t := strings.ToLower(orig.Transport()); !rt.fromInside && (t == "tcp" || t == "tls") {
		port := int(g.addr.Port())
		if t == "tls" {
			port = int(g.TLSAddr().Port())
		}
		req.PrependHeader(&sip.RecordRouteHeader{Address: sip.Uri{Scheme: "sip", Host: g.host, Port: port,
			UriParams: sip.HeaderParams{{K: "transport", V: t}, {K: "lr", V: ""}}}})
	}
	return append(opts, sipgo.ClientRequestAddRecordRoute)
}

// relayResponse relays one response of a forwarded request back to its
// sender, rewriting its SDP, and moves the call along (a 2xx confirms a new
// call and settles a staged offer). It reports whether the transaction is
// over for the gateway.
func (g *Gateway) relayResponse(orig, req *sip.Request, tx sip.ServerTransaction, rt *route, res *sip.Response) bool {
	c := rt.call
	g.c.Responses.Add(1)
	res.RemoveHeader("Via")
	success := res.StatusCode >= 200 && res.StatusCode < 300
	final := res.StatusCode >= 200
	if final {
		g.settle(rt, success) // the offer's media before the answer's
	}
	if rt.newCall {
		switch {
		case success:
			c.confirm(toTagOf(res), source(res))
			g.armTimer(c, g.cfg.AckTimeout)
		case !final:
			c.early(toTagOf(res))
		}
	}
	if len(res.Body()) > 0 && c != nil && isSDP(res) && res.StatusCode < 300 {
		body, _, err := g.rewrite(c, res.Body(), !rt.fromInside, false)
		if err != nil {
			g.log.Warn("answer SDP not proxied", "call", c.id, "err", err)
			g.c.BadSDP.Add(1)
			res = sip.NewResponseFromRequest(orig, 502, "Bad Gateway", nil)
			success = false
		} else {
			res.SetBody(body)
		}
	}
	if rt.newCall && success {
		c.mu.Lock()
		c.invite, c.answer = orig, res.Clone()
		c.mu.Unlock()
	}
	if rt.newCall && final && !success {
		// Before the answer goes out: the caller may retry with the
		// same Call-ID at once (after a 401/407).
		g.endCall(c)
		if !rt.fromInside {
			// The inside server's refusal of an outside INVITE (a 401/407
			// challenge, 486...) goes out once too: relayed through the
			// transaction, a spoofed source would get it 11 times. The
			// caller's ACK finds no transaction and is dropped (the client
			// transaction ACKed upstream); a lost copy is recovered when
			// the caller retransmits.
			g.respond(tx, orig, res)
			return true
		}
	}
	if err := tx.Respond(res); err != nil {
		g.log.Debug("relay response", "err", err)
	}
	if !final {
		return false
	}
	// Only the other side's 2xx ends a call on BYE: an answer of 481 or
	// no answer leaves it to its own timeouts.
	if req.Method == sip.BYE && success {
		g.endCall(c)
	}
	return true
}

func (g *Gateway) reply(tx sip.ServerTransaction, req *sip.Request, code int, reason string, hdrs ...sip.Header) {
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	for _, h := range hdrs {
		res.AppendHeader(h)
	}
	if err := tx.Respond(res); err != nil {
		g.log.Debug("respond", "code", code, "err", err)
	}
}

// sendCancel cancels a forwarded INVITE (RFC 3261 section 16.10).
func (g *Gateway) sendCancel(ctx context.Context, inv *sip.Request) {
	cr := sip.NewRequest(sip.CANCEL, inv.Recipient)
	cr.AppendHeader(sip.HeaderClone(inv.Via()))
	cr.AppendHeader(sip.HeaderClone(inv.From()))
	cr.AppendHeader(sip.HeaderClone(inv.To()))
	cr.AppendHeader(sip.HeaderClone(inv.CallID()))
	cseq := sip.CSeqHeader{SeqNo: inv.CSeq().SeqNo, MethodName: sip.CANCEL}
	cr.AppendHeader(&cseq)
	mf := sip.MaxForwardsHeader(70)
	cr.AppendHeader(&mf)
	cr.SetDestination(inv.Destination())
	cr.SetTransport(inv.Transport())
	res, err := g.client.Do(ctx, cr, g.fromListener)
	if err != nil {
		g.log.Debug("cancel", "err", err)
		return
	}
	g.log.Debug("cancel answered", "code", res.StatusCode)
}

// fromListener sends a request from the SIP listener's socket (sipgo
// would open a new socket for a request built with options).
func (g *Gateway) fromListener(_ *sipgo.Client, r *sip.Request) error {
	r.Laddr = sip.Addr{IP: net.IP(g.addr.Addr().AsSlice()), Port: int(g.addr.Port())}
	return nil
}
