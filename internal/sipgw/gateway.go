// Package sipgw is the SIP border gateway (seed A): a stateful SIP proxy
// (RFC 3261 section 16, on emiago/sipgo) between outside clients and one
// inside server, paired with the fixed-port media proxy
// (internal/mediaproxy). Outside, it needs one SIP port, one RTP port and
// one RTCP port whatever the number of calls.
//
// Requests from the upstream server's address (or from --inside-net
// prefixes) are inside; everything else is outside. The gateway
// Record-Routes every dialog (RFC 3261 section 16.6 step 4), so in-dialog
// requests (ACK, BYE, re-INVITE, UPDATE, INFO) traverse it and are routed by
// the call they belong to. REGISTER from outside is relayed upstream with
// the Contact rewritten to the gateway, so the inside server can call a
// registered client through it.
//
// SDP is rewritten both ways (RFC 4566, RFC 3264): SDP going outside
// carries the fixed boundary address and RTP/RTCP ports (a=rtcp, RFC 3605,
// when RTCP is not RTP+1); SDP going inside carries the stream's inside
// media proxy port. Each m-line is one media proxy stream, with its SSRC
// from a=ssrc (RFC 5576) or learnt by the media proxy's latch.
package sipgw

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/traverse-rtc/traverse/internal/mediaproxy"
	"github.com/traverse-rtc/traverse/internal/tlsutil"
)

// Config configures a Gateway.
type Config struct {
	// SIP is the outside SIP listener (UDP), "host:port". Required; port 0
	// picks one (tests).
	SIP string
	// TCP also listens for SIP over TCP on the same address.
	TCP bool
	// TLS, when set, listens for SIP over TLS on this "host:port" (a
	// fourth outside port), with the certificate in TLSCert and TLSKey (PEM
	// files; both empty: a self-signed certificate, for tests).
	TLS             string
	TLSCert, TLSKey string
	// Upstream is the inside SIP server, "host:port". Required.
	Upstream string
	// InsideNets are extra source prefixes whose requests count as inside
	// (inside callers that are not the upstream address itself).
	InsideNets []netip.Prefix
	// OutsideIP is the address written into outside-bound SDP (default: the
	// media proxy's RTP address, else the SIP listener's).
	OutsideIP netip.Addr
	// Media is the media proxy. Required.
	Media *mediaproxy.Proxy
	// RateLimit is how many new INVITEs and REGISTERs per second one
	// outside source IP may send (default 20, burst RateBurst default 50);
	// above it the gateway answers 503 with Retry-After.
	RateLimit float64
	RateBurst int
	// TransactionTimeout bounds one forwarded transaction (default 32 s,
	// Timer B of RFC 3261).
	TransactionTimeout time.Duration
	Registerer         prometheus.Registerer
	Log                *slog.Logger
}

func (c *Config) validate() error {
	if c.SIP == "" || c.Upstream == "" || c.Media == nil {
		return fmt.Errorf("%w: SIP address, upstream and media proxy are required", ErrConfig)
	}
	if c.RateLimit <= 0 {
		c.RateLimit = 20
	}
	if c.RateBurst <= 0 {
		c.RateBurst = 50
	}
	if c.TransactionTimeout <= 0 {
		c.TransactionTimeout = 32 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// call is one dialog the gateway proxies.
type call struct {
	id            string
	callerOutside bool
	outside       string // signaling address of the outside party
	inside        string // signaling address of the inside party

	mu     sync.Mutex    // guards invite and answer
	invite *sip.Request  // the initial INVITE as the caller sent it
	answer *sip.Response // its 2xx as the callee sent it (top Via removed)
}

// binding is a registered outside client.
type binding struct {
	contact sip.Uri // its own Contact URI
	src     string  // where its REGISTER came from (NAT-safe route back)
	expires time.Time
}

// Counters are the gateway's totals, readable without Prometheus.
type Counters struct {
	Requests, Responses atomic.Uint64
	BadRequest          atomic.Uint64 // 400
	BadSDP              atomic.Uint64 // 488
	RateLimited         atomic.Uint64 // 503 for floods
	NoMedia             atomic.Uint64 // 503 for an exhausted port pool
	NotFound            atomic.Uint64 // 404: no such registered user
	CallsStarted        atomic.Uint64
	CallsEnded          atomic.Uint64
}

// Gateway is a running SIP border gateway.
type Gateway struct {
	cfg      Config
	log      *slog.Logger
	mp       *mediaproxy.Proxy
	ua       *sipgo.UserAgent
	srv      *sipgo.Server
	client   *sipgo.Client
	pc       net.PacketConn
	ln       net.Listener
	tlsLn    net.Listener
	addr     netip.AddrPort
	host     string // in Via and Record-Route
	upstream netip.AddrPort
	outIP    netip.Addr
	c        Counters

	mu       sync.Mutex // guards calls, bindings, limiters
	calls    map[string]*call
	bindings map[string]*binding
	limiters map[netip.Addr]*limiter

	wg   sync.WaitGroup
	once sync.Once
}

type limiter struct {
	l    *rate.Limiter
	seen time.Time
}

// New binds the SIP listener(s). Run serves them.
func New(cfg Config) (*Gateway, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	up, err := resolve(cfg.Upstream)
	if err != nil {
		return nil, err
	}
	pc, err := net.ListenPacket("udp", cfg.SIP)
	if err != nil {
		return nil, err
	}
	addr := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	g := &Gateway{
		cfg: cfg, log: cfg.Log, mp: cfg.Media, pc: pc, addr: addr, upstream: up,
		calls: map[string]*call{}, bindings: map[string]*binding{}, limiters: map[netip.Addr]*limiter{},
	}
	if cfg.TCP {
		if g.ln, err = net.Listen("tcp", addr.String()); err != nil {
			pc.Close()
			return nil, err
		}
	}
	if cfg.TLS != "" {
		host, _, _ := net.SplitHostPort(cfg.TLS)
		tc, err := tlsutil.ServerConfig(cfg.TLSCert, cfg.TLSKey, "traverse sipgw", host)
		if err != nil {
			g.closeSockets()
			return nil, fmt.Errorf("sipgw: TLS: %w", err)
		}
		if g.tlsLn, err = tls.Listen("tcp", cfg.TLS, tc); err != nil {
			g.closeSockets()
			return nil, err
		}
	}
	g.outIP = cfg.OutsideIP
	if !g.outIP.IsValid() {
		g.outIP = cfg.Media.RTPAddr().Addr()
		if g.outIP.IsUnspecified() {
			g.outIP = addr.Addr()
		}
	}
	// The name the gateway puts in Via and Record-Route: the SIP address,
	// or the outside IP when the listener is on a wildcard address.
	g.host = addr.Addr().String()
	if addr.Addr().IsUnspecified() {
		if g.outIP.IsUnspecified() {
			g.closeSockets()
			return nil, fmt.Errorf("%w: SIP listens on a wildcard address: set the outside IP", ErrConfig)
		}
		g.host = g.outIP.String()
	}
	host := g.host
	g.ua, err = sipgo.NewUA(
		sipgo.WithUserAgent("traverse-sipgw"),
		sipgo.WithUserAgentHostname(host),
		sipgo.WithUserAgentTransactionLayerOptions(
			sip.WithTransactionLayerLogger(cfg.Log),
			sip.WithTransactionLayerUnhandledResponseHandler(g.onStrayResponse),
		),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(cfg.Log)),
	)
	if err != nil {
		g.closeSockets()
		return nil, err
	}
	if g.srv, err = sipgo.NewServer(g.ua, sipgo.WithServerLogger(cfg.Log)); err != nil {
		g.closeSockets()
		return nil, err
	}
	// Every request leaves from the one SIP socket: no extra outside port.
	if g.client, err = sipgo.NewClient(g.ua, sipgo.WithClientHostname(host), sipgo.WithClientConnectionAddr(addr.String()), sipgo.WithClientLogger(cfg.Log)); err != nil {
		g.closeSockets()
		return nil, err
	}
	g.srv.OnRegister(g.onRegister)
	g.srv.OnInvite(g.onRequest)
	g.srv.OnAck(g.onAck)
	g.srv.OnBye(g.onRequest)
	g.srv.OnCancel(g.onStrayCancel)
	g.srv.OnNoRoute(g.onRequest)
	for _, m := range []sip.RequestMethod{sip.UPDATE, sip.INFO, sip.OPTIONS, sip.MESSAGE, sip.NOTIFY, sip.SUBSCRIBE, sip.REFER, sip.PRACK} {
		g.srv.OnRequest(m, g.onRequest)
	}
	// Media must never be aimed at the signaling listeners.
	cfg.Media.AddOwnEndpoints(addr, g.TLSAddr())
	if cfg.Registerer != nil {
		if err := g.register(cfg.Registerer); err != nil {
			g.closeSockets()
			return nil, err
		}
	}
	return g, nil
}

func resolve(hostport string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(hostport); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	ua, err := net.ResolveUDPAddr("udp", hostport)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: upstream %q: %w", ErrConfig, hostport, err)
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// Addr is the bound SIP address.
func (g *Gateway) Addr() netip.AddrPort { return g.addr }

// Counters returns the live counters.
func (g *Gateway) Counters() *Counters { return &g.c }

// Calls returns the number of calls held.
func (g *Gateway) Calls() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.calls)
}

// Run serves SIP until ctx ends, then closes the gateway.
func (g *Gateway) Run(ctx context.Context) error {
	errc := make(chan error, 3)
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		errc <- g.srv.ServeUDP(g.pc)
	}()
	if g.ln != nil {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			errc <- g.srv.ServeTCP(g.ln)
		}()
	}
	if g.tlsLn != nil {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			errc <- g.srv.ServeTLS(g.tlsLn)
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	g.Close()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// Close stops serving and waits; it is idempotent. It does not close the
// media proxy, which its owner closes.
func (g *Gateway) Close() error {
	g.once.Do(func() {
		g.closeSockets()
		if g.ua != nil {
			g.ua.Close()
		}
		g.wg.Wait()
	})
	return nil
}

func (g *Gateway) closeSockets() {
	g.pc.Close()
	if g.ln != nil {
		g.ln.Close()
	}
	if g.tlsLn != nil {
		g.tlsLn.Close()
	}
}

// TLSAddr is the bound SIP-over-TLS address (invalid when TLS is off).
func (g *Gateway) TLSAddr() netip.AddrPort {
	if g.tlsLn == nil {
		return netip.AddrPort{}
	}
	return g.tlsLn.Addr().(*net.TCPAddr).AddrPort()
}

// MediaTimeout forgets a call whose media stopped; wire it to the media
// proxy's OnTimeout.
// It sends BYE to both parties of an established call.
func (g *Gateway) MediaTimeout(callID string) {
	g.mu.Lock()
	c, ok := g.calls[callID]
	delete(g.calls, callID)
	g.mu.Unlock()
	if !ok {
		return
	}
	g.c.CallsEnded.Add(1)
	c.mu.Lock()
	inv, ans := c.invite, c.answer
	c.mu.Unlock()
	if inv == nil || ans == nil || ans.Contact() == nil || inv.Contact() == nil {
		return
	}
	caller, callee := c.outside, c.inside
	if !c.callerOutside {
		caller, callee = c.inside, c.outside
	}
	// To the callee: as if from the caller, CSeq above anything it sent.
	toCallee := g.bye(ans.Contact().Address, inv.From(), ans.To(), inv.CallID(), inv.CSeq().SeqNo+10000)
	// To the caller: as if from the callee.
	from, to := ans.To().AsFrom(), inv.From().AsTo()
	toCaller := g.bye(inv.Contact().Address, &from, &to, inv.CallID(), 1<<30)
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for _, x := range []struct {
			req  *sip.Request
			dest string
		}{{toCallee, callee}, {toCaller, caller}} {
			x.req.SetDestination(x.dest)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := g.client.Do(ctx, x.req, g.fromListener, sipgo.ClientRequestAddVia)
			cancel()
			if err != nil {
				g.log.Debug("BYE on media timeout", "call", callID, "err", err)
			}
		}
	}()
}

func (g *Gateway) bye(target sip.Uri, from *sip.FromHeader, to *sip.ToHeader, id *sip.CallIDHeader, seq uint32) *sip.Request {
	r := sip.NewRequest(sip.BYE, *target.Clone())
	r.AppendHeader(sip.HeaderClone(from))
	r.AppendHeader(sip.HeaderClone(to))
	r.AppendHeader(sip.HeaderClone(id))
	r.AppendHeader(&sip.CSeqHeader{SeqNo: seq, MethodName: sip.BYE})
	mf := sip.MaxForwardsHeader(70)
	r.AppendHeader(&mf)
	r.AppendHeader(sip.NewHeader("Reason", `SIP;cause=408;text="media timeout"`))
	r.SetTransport("UDP")
	return r
}

func (g *Gateway) isInside(src netip.AddrPort) bool {
	if src == g.upstream {
		return true
	}
	for _, p := range g.cfg.InsideNets {
		if p.Contains(src.Addr()) {
			return true
		}
	}
	return false
}

func source(req *sip.Request) netip.AddrPort {
	ap, err := netip.ParseAddrPort(req.Source())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// allow applies the per-source flood limit.
func (g *Gateway) allow(src netip.Addr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	l := g.limiters[src]
	if l == nil {
		if len(g.limiters) >= 4096 {
			for a, x := range g.limiters {
				if now.Sub(x.seen) > time.Minute {
					delete(g.limiters, a)
				}
			}
		}
		l = &limiter{l: rate.NewLimiter(rate.Limit(g.cfg.RateLimit), g.cfg.RateBurst)}
		g.limiters[src] = l
	}
	l.seen = now
	return l.l.AllowN(now, 1)
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

// valid checks the headers a proxy needs (RFC 3261 section 16.3).
func valid(req *sip.Request) bool {
	return req.CallID() != nil && req.From() != nil && req.To() != nil && req.CSeq() != nil && req.Via() != nil
}

func toTag(req *sip.Request) string {
	t, _ := req.To().Params.Get("tag")
	return t
}

// removeOwnRoutes pops the Route entries that name the gateway (RFC 3261
// section 16.4).
func (g *Gateway) removeOwnRoutes(req *sip.Request) {
	for {
		r := req.Route()
		if r == nil || !g.isMe(r.Address) {
			return
		}
		req.RemoveHeader("Route")
	}
}

func (g *Gateway) isMe(u sip.Uri) bool {
	port := u.Port
	if port == 0 {
		port = 5060
	}
	return (port == int(g.addr.Port()) || (g.tlsLn != nil && port == int(g.TLSAddr().Port()))) &&
		(u.Host == g.host || u.Host == g.addr.Addr().String() || u.Host == g.outIP.String())
}

func (g *Gateway) onStrayCancel(req *sip.Request, tx sip.ServerTransaction) {
	g.reply(tx, req, 481, "Call/Transaction Does Not Exist")
}

// onRequest handles INVITE (initial and re-), BYE, UPDATE and every other
// request that is not REGISTER, ACK or a matched CANCEL.
func (g *Gateway) onRequest(req *sip.Request, tx sip.ServerTransaction) {
	g.c.Requests.Add(1)
	if !valid(req) {
		g.c.BadRequest.Add(1)
		g.reply(tx, req, 400, "Bad Request")
		return
	}
	if mf := req.MaxForwards(); mf != nil && mf.Val() == 0 {
		g.reply(tx, req, 483, "Too Many Hops")
		return
	}
	// The server transaction keeps reading the request it was given: the
	// gateway rewrites a copy.
	orig := req
	req = req.Clone()
	src := source(req)
	inside := g.isInside(src)
	id := req.CallID().Value()
	inDialog := toTag(req) != ""

	g.mu.Lock()
	c := g.calls[id]
	g.mu.Unlock()

	var dest string
	newCall := false
	switch {
	case inDialog || (c != nil && !req.IsInvite()):
		if c == nil {
			g.reply(tx, orig, 481, "Call/Transaction Does Not Exist")
			return
		}
		dest = c.inside
		if inside {
			dest = c.outside
		}
	default:
		if req.IsInvite() && !inside && !g.allow(src.Addr()) {
			g.c.RateLimited.Add(1)
			retry := sip.NewHeader("Retry-After", "5")
			g.reply(tx, orig, 503, "Service Unavailable", retry)
			return
		}
		if inside {
			b := g.lookup(req.Recipient.User)
			if b == nil {
				g.c.NotFound.Add(1)
				g.reply(tx, orig, 404, "Not Found")
				return
			}
			req.Recipient = *b.contact.Clone()
			dest = b.src
		} else {
			dest = g.upstream.String()
		}
		if req.IsInvite() {
			if c == nil {
				c = &call{id: id, callerOutside: !inside, outside: src.String(), inside: g.upstream.String()}
				if inside {
					c.inside, c.outside = src.String(), dest
				}
				newCall = true
			}
		}
	}
	if len(req.Body()) > 0 && c != nil && isSDP(req) {
		body, err := g.rewrite(c, req.Body(), inside)
		if err != nil {
			if newCall {
				_ = g.mp.DeleteCall(id)
			}
			if errors.Is(err, mediaproxy.ErrNoPorts) {
				g.c.NoMedia.Add(1)
				g.reply(tx, orig, 503, "Service Unavailable", sip.NewHeader("Retry-After", "10"))
				return
			}
			g.c.BadSDP.Add(1)
			g.reply(tx, orig, 488, "Not Acceptable Here")
			return
		}
		req.SetBody(body)
	}
	if newCall {
		g.mu.Lock()
		g.calls[id] = c
		g.mu.Unlock()
		g.c.CallsStarted.Add(1)
	}
	g.forward(orig, req, tx, dest, c, inside, newCall)
}

type headerGetter interface{ GetHeader(string) sip.Header }

func isSDP(m headerGetter) bool {
	ct := m.GetHeader("Content-Type")
	return ct == nil || strings.HasPrefix(strings.ToLower(strings.TrimSpace(ct.Value())), "application/sdp")
}

// forward relays req to dest in a client transaction and relays the
// responses back, rewriting their SDP.
func (g *Gateway) forward(orig, req *sip.Request, tx sip.ServerTransaction, dest string, c *call, fromInside, newCall bool) {
	g.removeOwnRoutes(req)
	req.SetDestination(dest)
	// The gateway speaks UDP to both sides whatever the client used.
	req.SetTransport("UDP")
	opts := []sipgo.ClientRequestOption{g.fromListener, sipgo.ClientRequestAddVia, sipgo.ClientRequestDecreaseMaxForward}
	if req.IsInvite() && newCall || (c != nil && toTag(req) == "" && !req.IsInvite()) {
		// A client on TCP or TLS gets its own Record-Route below the UDP one
		// (double Record-Route, RFC 5658): the inside side routes its
		// in-dialog requests to the top entry, the client to the bottom one.
		if t := strings.ToLower(orig.Transport()); !fromInside && (t == "tcp" || t == "tls") {
			port := int(g.addr.Port())
			if t == "tls" {
				port = int(g.TLSAddr().Port())
			}
			req.PrependHeader(&sip.RecordRouteHeader{Address: sip.Uri{Scheme: "sip", Host: g.host, Port: port,
				UriParams: sip.HeaderParams{{K: "transport", V: t}, {K: "lr", V: ""}}}})
		}
		opts = append(opts, sipgo.ClientRequestAddRecordRoute)
	}
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.TransactionTimeout)
	defer cancel()
	clTx, err := g.client.TransactionRequest(ctx, req, opts...)
	if err != nil {
		g.log.Debug("forward", "err", err, "dest", dest)
		if newCall {
			g.endCall(c.id)
		}
		g.reply(tx, orig, 503, "Service Unavailable")
		return
	}
	defer clTx.Terminate()
	if req.IsInvite() {
		fwd := req
		tx.OnCancel(func(*sip.Request) {
			go g.sendCancel(fwd)
		})
	}
	isBye := req.Method == sip.BYE
	for {
		select {
		case res, ok := <-clTx.Responses():
			if !ok {
				return
			}
			g.c.Responses.Add(1)
			res.RemoveHeader("Via")
			if len(res.Body()) > 0 && c != nil && isSDP(res) && res.StatusCode < 300 {
				body, err := g.rewrite(c, res.Body(), !fromInside)
				if err != nil {
					g.log.Warn("answer SDP not proxied", "call", c.id, "err", err)
					g.c.BadSDP.Add(1)
					res = sip.NewResponseFromRequest(orig, 502, "Bad Gateway", nil)
				} else {
					res.SetBody(body)
				}
			}
			if newCall && res.StatusCode >= 200 && res.StatusCode < 300 {
				c.mu.Lock()
				c.invite, c.answer = orig, res.Clone()
				c.mu.Unlock()
			}
			if err := tx.Respond(res); err != nil {
				g.log.Debug("relay response", "err", err)
			}
			if res.StatusCode < 200 {
				continue
			}
			if (newCall && res.StatusCode >= 300) || isBye {
				g.endCall(c.id)
			}
			return
		case <-clTx.Done():
			if newCall || isBye {
				g.endCall(c.id)
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
				if newCall {
					g.mu.Lock()
					_, held := g.calls[c.id]
					g.mu.Unlock()
					if held && tx.Err() != nil {
						g.endCall(c.id)
					}
				}
			}
			return
		}
	}
}

// sendCancel cancels a forwarded INVITE (RFC 3261 section 16.10).
func (g *Gateway) sendCancel(inv *sip.Request) {
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
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
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

// endCall releases a call's media and forgets it.
func (g *Gateway) endCall(id string) {
	g.mu.Lock()
	_, ok := g.calls[id]
	delete(g.calls, id)
	g.mu.Unlock()
	_ = g.mp.DeleteCall(id)
	if ok {
		g.c.CallsEnded.Add(1)
	}
}

// onAck relays the ACK of a 2xx (a request of its own; ACKs of non-2xx
// stay in the transaction layer).
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
	inside := g.isInside(source(req))
	dest := c.inside
	if inside {
		dest = c.outside
	}
	if len(req.Body()) > 0 && isSDP(req) {
		if body, err := g.rewrite(c, req.Body(), inside); err == nil {
			req.SetBody(body)
		}
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
// statelessly). The top Via must be the gateway's.
func (g *Gateway) onStrayResponse(res *sip.Response) {
	v := res.Via()
	if v == nil || v.Host != g.host || v.Port != int(g.addr.Port()) {
		return
	}
	res.RemoveHeader("Via")
	if res.Via() == nil {
		return
	}
	g.mu.Lock()
	c := g.calls[res.CallID().Value()]
	g.mu.Unlock()
	if c != nil && len(res.Body()) > 0 && isSDP(res) {
		src, _ := netip.ParseAddrPort(res.Source())
		if body, err := g.rewrite(c, res.Body(), g.isInside(src)); err == nil {
			res.SetBody(body)
		}
	}
	res.SetDestination("")
	if err := g.srv.WriteResponse(res); err != nil {
		g.log.Debug("stray response", "err", err)
	}
}

// rewrite applies one SDP to the media proxy and rewrites it for the
// other side. fromInside says which side wrote it.
func (g *Gateway) rewrite(c *call, body []byte, fromInside bool) ([]byte, error) {
	sd, ss, err := parseSDP(body)
	if err != nil {
		return nil, err
	}
	flags := mediaproxy.FlagCalleeOutside
	if c.callerOutside {
		flags = mediaproxy.FlagCallerOutside
	}
	var eps []endpoints
	if !fromInside {
		var sig netip.Addr
		if ap, err := netip.ParseAddrPort(c.outside); err == nil {
			sig = ap.Addr().Unmap()
		}
		if eps, err = outsideMedia(g.mp, sig, ss); err != nil {
			return nil, err
		}
	}
	pp := make([]ports, len(ss))
	for i, s := range ss {
		if s.disabled {
			_, _ = g.mp.Apply(&mediaproxy.Descriptor{Op: mediaproxy.OpDelete, CallID: c.id, Index: uint8(s.index)})
			continue
		}
		d := mediaproxy.Descriptor{Op: mediaproxy.OpUpsert, Flags: flags, Kind: s.kind, Index: uint8(s.index), CallID: c.id}
		if fromInside {
			d.Server, d.ServerRTCP = s.rtp, s.rtcp
		} else {
			// Checked against the destination policy (outsideMedia).
			d.Client, d.ClientRTCP = eps[i].rtp, eps[i].rtcp
			if s.hasSSRC {
				d.Flags |= mediaproxy.FlagSSRC
				d.SSRC = s.ssrc
			}
		}
		r, err := g.mp.Apply(&d)
		if err != nil {
			return nil, err
		}
		if fromInside {
			pp[i] = ports{r.FixedRTP, r.FixedRTCP}
		} else {
			pp[i] = ports{r.InsideRTP, r.InsideRTCP}
		}
	}
	ip := g.mp.InsideIP()
	if fromInside {
		ip = g.outIP
	}
	return rewriteSDP(sd, ss, ip, pp)
}
