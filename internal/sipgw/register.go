package sipgw

import (
	"context"
	"net/netip"
	"strconv"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// binding is a registered outside client.
type binding struct {
	contact sip.Uri // its own Contact URI
	src     string  // where its REGISTER came from (NAT-safe route back)
	expires time.Time
}

// onRegister relays an outside client's REGISTER to the upstream
// registrar with its Contact pointing at the gateway, and on success keeps
// the binding so that INVITEs from inside for that user reach the client.
func (g *Gateway) onRegister(req *sip.Request, tx sip.ServerTransaction) {
	g.c.Requests.Add(1)
	if !valid(req) {
		g.reject(tx, req, 400, "Bad Request", &g.c.BadRequest)
		return
	}
	src := source(req)
	if g.isInside(src) {
		g.reject(tx, req, 403, "Forbidden", nil)
		return
	}
	if !g.requests.Allow(src.Addr()) {
		g.reject(tx, req, 503, "Service Unavailable", &g.c.RateLimited, sip.NewHeader("Retry-After", "5"))
		return
	}
	in := req
	req = req.Clone()
	user := req.To().Address.User
	var orig *sip.Uri
	if ct := req.Contact(); ct != nil && !ct.Address.Wildcard {
		u := ct.Address.Clone()
		orig = u
		ct.Address.Host = g.outIP.String()
		ct.Address.Port = int(g.addr.Port())
		ct.Address.UriParams = sip.NewParams()
	}
	req.SetDestination(g.upstream.String())
	req.SetTransport("UDP")
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.TransactionTimeout)
	defer cancel()
	clTx, err := g.client.TransactionRequest(ctx, req, g.fromListener, sipgo.ClientRequestAddVia, sipgo.ClientRequestDecreaseMaxForward)
	if err != nil {
		g.reply(tx, in, 503, "Service Unavailable")
		return
	}
	defer clTx.Terminate()
	for {
		select {
		case res, ok := <-clTx.Responses():
			if !ok {
				return
			}
			res.RemoveHeader("Via")
			if res.StatusCode >= 200 && res.StatusCode < 300 && user != "" {
				g.bind(user, orig, src.String(), expiresOf(req, res))
				if ct := res.Contact(); ct != nil && orig != nil {
					ct.Address = *orig.Clone()
				}
			}
			if err := tx.Respond(res); err != nil {
				g.log.Debug("relay REGISTER response", "err", err)
			}
			if res.StatusCode >= 200 {
				return
			}
		case <-clTx.Done():
			if clTx.Err() != nil {
				g.reply(tx, in, 408, "Request Timeout")
			}
			return
		}
	}
}

func expiresOf(req *sip.Request, res *sip.Response) time.Duration {
	for _, m := range []headerGetter{res, req} {
		if ct := m.GetHeader("Contact"); ct != nil {
			if c, ok := ct.(*sip.ContactHeader); ok {
				if v, ok := c.Params.Get("expires"); ok {
					if n, err := strconv.Atoi(v); err == nil {
						return time.Duration(n) * time.Second
					}
				}
			}
		}
		if h := m.GetHeader("Expires"); h != nil {
			if n, err := strconv.Atoi(h.Value()); err == nil {
				return time.Duration(n) * time.Second
			}
		}
	}
	return time.Hour
}

func (g *Gateway) bind(user string, contact *sip.Uri, src string, exp time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if exp <= 0 || contact == nil {
		delete(g.bindings, user)
		return
	}
	// Requests to the client go where its Contact says when that is the
	// address it registered from (no NAT between), else back to the
	// REGISTER's source, the one address known to pass its NAT.
	dest := src
	if ap, err := netip.ParseAddrPort(src); err == nil && contact.Host == ap.Addr().String() {
		port := contact.Port
		if port == 0 {
			port = 5060
		}
		dest = netip.AddrPortFrom(ap.Addr(), uint16(port)).String()
	}
	g.bindings[user] = &binding{contact: *contact, src: dest, expires: time.Now().Add(exp)}
}

func (g *Gateway) lookup(user string) *binding {
	g.mu.Lock()
	defer g.mu.Unlock()
	b := g.bindings[user]
	if b == nil {
		return nil
	}
	if time.Now().After(b.expires) {
		delete(g.bindings, user)
		return nil
	}
	c := *b
	return &c
}

// Registrations returns the number of live bindings.
func (g *Gateway) Registrations() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.bindings)
}
