// Package sipgw is the SIP border gateway (the three-port SIP boundary): a stateful SIP proxy
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

	"github.com/traverse-rtc/traverse/internal/config"
	"github.com/traverse-rtc/traverse/internal/connlimit"
	"github.com/traverse-rtc/traverse/internal/mediaproxy"
	"github.com/traverse-rtc/traverse/internal/persource"
	"github.com/traverse-rtc/traverse/internal/tlsutil"
)

// DefaultMaxConns is Config.MaxConns's default.
const DefaultMaxConns = 1024

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
	// CallRate is how many new calls (INVITEs creating a dialog) per
	// second one outside source may start (default 5, burst CallBurst
	// default 4 x CallRate); above it: 503 with Retry-After. A source is
	// an IPv4 address or an IPv6 /64. A trunk from a carrier's SBC needs
	// more.
	CallRate  float64
	CallBurst int
	// SourceStreams is how many inside media streams (a port pair each)
	// the calls of one outside source may hold at once (default 100; a
	// call holds one per m-line). Above it: 503. It keeps one address from
	// draining the pool for everyone; raise it for trunks.
	SourceStreams int
	// SetupTimeout ends a call not answered (2xx) this long after its
	// INVITE: the gateway CANCELs it upstream and gives its ports back
	// (default 60s, longer than most ringing). AckTimeout ends one whose
	// 2xx is not ACKed this long (default 8s: a lost ACK is recovered by
	// 2xx retransmissions at 0.5, 1, 2, 4 s).
	SetupTimeout, AckTimeout time.Duration
	// AnswerRate is how many answers per second the gateway writes by
	// itself (400, 481, 483, 488, 503...) to one outside source (default
	// 10, burst AnswerBurst default 2 x AnswerRate); beyond it, requests
	// are dropped unanswered, so the gateway is no amplifier toward
	// spoofed sources.
	AnswerRate  float64
	AnswerBurst int
	// TransactionTimeout bounds one forwarded transaction (default 32 s,
	// Timer B of RFC 3261).
	TransactionTimeout time.Duration
	// MaxConns caps the connections each of the TCP and TLS listeners
	// holds open at once (default 1024); MaxConnsPerAddr caps those from
	// one source, an IPv4 address or an IPv6 /64 (default 32). Beyond,
	// new connections are closed at accept and counted
	// (traverse_listener_connections_refused_total{listener="sipgw_tcp"}).
	MaxConns, MaxConnsPerAddr int
	Registerer                prometheus.Registerer
	Log                       *slog.Logger
}

func (c *Config) validate() error {
	if c.SIP == "" || c.Upstream == "" || c.Media == nil {
		return fmt.Errorf("%w: SIP address, upstream and media proxy are required", ErrConfig)
	}
	config.Default(&c.MaxConns, DefaultMaxConns)
	config.Default(&c.MaxConnsPerAddr, 32)
	config.Default(&c.RateLimit, 20)
	config.Default(&c.RateBurst, 50)
	config.Default(&c.CallRate, 5)
	config.Default(&c.CallBurst, max(1, int(4*c.CallRate)))
	config.Default(&c.SourceStreams, 100)
	config.Default(&c.SetupTimeout, 60*time.Second)
	config.Default(&c.AckTimeout, 8*time.Second)
	config.Default(&c.AnswerRate, 10)
	config.Default(&c.AnswerBurst, max(1, int(2*c.AnswerRate)))
	config.Default(&c.TransactionTimeout, 32*time.Second)
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return nil
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
	BadRequest          atomic.Uint64             // 400
	BadSDP              atomic.Uint64             // 488
	TooManyHops         atomic.Uint64             // 483
	RateLimited         atomic.Uint64             // 503 for floods
	CallRateLimited     atomic.Uint64             // 503: the source's new-call rate
	SourceStreams       atomic.Uint64             // 503: the source's share of the pool
	NoMedia             atomic.Uint64             // 503 for an exhausted port pool
	NotFound            atomic.Uint64             // 404: no such registered user
	NoDialog            atomic.Uint64             // 481: in-dialog request for no call
	DialogMismatch      atomic.Uint64             // 481 (or a dropped ACK/response): a call's Call-ID with the wrong tags or source
	Pending             atomic.Uint64             // 491: an offer while another is pending
	Rejected            atomic.Uint64             // answers the gateway wrote by itself
	AnswersSuppressed   atomic.Uint64             // refusals left unanswered (per-source answer rate)
	SetupTimeouts       atomic.Uint64             // calls ended for want of a 2xx or its ACK in time
	Unparseable         [numUnparse]atomic.Uint64 // messages sipgo could not parse, by reason
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

	requests *persource.Rate // out-of-dialog requests per source (RateLimit)
	newCalls *persource.Rate // new calls per source (CallRate)
	answers  *persource.Rate // the gateway's own answers per source (AnswerRate)

	mu       sync.Mutex // guards calls, bindings, shares, closed, and ops.Add
	calls    map[string]*call
	bindings map[string]*binding
	shares   persource.Counts // inside streams held per outside source
	closed   bool

	wg   sync.WaitGroup // the Serve loops
	ops  sync.WaitGroup // the gateway's own requests (CANCEL, BYE), see spawn
	stop chan struct{}  // closed by Close: ends the own requests' contexts
	once sync.Once
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
		cfg: cfg, mp: cfg.Media, pc: pc, addr: addr, upstream: up,
		calls: map[string]*call{}, bindings: map[string]*binding{},
		stop:     make(chan struct{}),
		requests: persource.NewRate(cfg.RateLimit, cfg.RateBurst),
		newCalls: persource.NewRate(cfg.CallRate, cfg.CallBurst),
		answers:  persource.NewRate(cfg.AnswerRate, cfg.AnswerBurst),
	}
	g.log = newLogger(cfg.Log, &g.c, cfg.Registerer)
	lim := connlimit.Limits{MaxConns: cfg.MaxConns, MaxConnsPerAddr: cfg.MaxConnsPerAddr}
	var lm, tlm *connlimit.Metrics
	if cfg.Registerer != nil && (cfg.TCP || cfg.TLS != "") {
		if lm, err = connlimit.NewMetrics(cfg.Registerer, "sipgw_tcp"); err == nil {
			tlm, err = connlimit.NewMetrics(cfg.Registerer, "sipgw_tls")
		}
		if err != nil {
			pc.Close()
			return nil, err
		}
	}
	if cfg.TCP {
		ln, err := net.Listen("tcp", addr.String())
		if err != nil {
			pc.Close()
			return nil, err
		}
		g.ln = connlimit.New(ln, lim, lm)
	}
	if cfg.TLS != "" {
		host, _, _ := net.SplitHostPort(cfg.TLS)
		tc, err := tlsutil.ServerConfig(cfg.TLSCert, cfg.TLSKey, "traverse sipgw", host)
		if err != nil {
			g.closeSockets()
			return nil, fmt.Errorf("sipgw: TLS: %w", err)
		}
		// Capped below TLS, so a refused connection costs no handshake.
		ln, err := net.Listen("tcp", cfg.TLS)
		if err != nil {
			g.closeSockets()
			return nil, err
		}
		g.tlsLn = tls.NewListener(connlimit.New(ln, lim, tlm), tc)
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
			sip.WithTransactionLayerLogger(g.log),
			sip.WithTransactionLayerUnhandledResponseHandler(g.onStrayResponse),
		),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(g.log)),
	)
	if err != nil {
		g.closeSockets()
		return nil, err
	}
	if g.srv, err = sipgo.NewServer(g.ua, sipgo.WithServerLogger(g.log)); err != nil {
		g.closeSockets()
		return nil, err
	}
	// Every request leaves from the one SIP socket: no extra outside port.
	if g.client, err = sipgo.NewClient(g.ua, sipgo.WithClientHostname(host), sipgo.WithClientConnectionAddr(addr.String()), sipgo.WithClientLogger(g.log)); err != nil {
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
		g.mu.Lock()
		g.closed = true
		for _, c := range g.calls {
			c.stopTimer()
		}
		g.mu.Unlock()
		// The own requests first: run after the sockets close, sipgo would
		// open new ones that nothing closes.
		close(g.stop)
		g.ops.Wait()
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

// spawn runs one of the gateway's own requests (CANCEL, BYE) in a
// goroutine Close waits for, with a context that ends after 10 s or when
// the gateway closes. After Close it does nothing.
func (g *Gateway) spawn(f func(ctx context.Context)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	g.ops.Add(2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	done := make(chan struct{})
	go func() {
		defer g.ops.Done()
		select {
		case <-g.stop:
			cancel()
		case <-done:
		}
	}()
	go func() {
		defer g.ops.Done()
		defer close(done)
		defer cancel()
		f(ctx)
	}()
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

func source(m interface{ Source() string }) netip.AddrPort {
	ap, err := netip.ParseAddrPort(m.Source())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// valid checks the headers a proxy needs (RFC 3261 section 16.3).
func valid(req *sip.Request) bool {
	return req.CallID() != nil && req.From() != nil && req.To() != nil && req.CSeq() != nil && req.Via() != nil
}

func toTag(req *sip.Request) string { return toTagOf(req) }

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

	g.mu.Lock()
	c := g.calls[req.CallID().Value()]
	g.mu.Unlock()
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
		g.forward(orig, req, tx, dest, nil, inside, false, nil)
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
	g.forward(orig, req, tx, dest, c, inside, true, nil)
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
	dest := c.inside
	if inside {
		dest = c.outsideAddr().String()
	}
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
	g.forward(orig, req, tx, dest, c, inside, false, of)
}

type headerGetter interface{ GetHeader(string) sip.Header }

func isSDP(m headerGetter) bool {
	ct := m.GetHeader("Content-Type")
	return ct == nil || strings.HasPrefix(strings.ToLower(strings.TrimSpace(ct.Value())), "application/sdp")
}

// forward relays req to dest in a client transaction and relays the
// responses back, rewriting their SDP. newCall says req is the INVITE that
// makes c; of is the staged offer req carries, committed on a 2xx and
// discarded on anything else.
func (g *Gateway) forward(orig, req *sip.Request, tx sip.ServerTransaction, dest string, c *call, fromInside, newCall bool, of *offer) {
	settle := func(ok bool) {
		if of == nil {
			return
		}
		if ok {
			g.commit(c, of)
		} else {
			g.discard(c, of)
		}
		of = nil
	}
	defer settle(false)
	g.removeOwnRoutes(req)
	req.SetDestination(dest)
	// The gateway speaks UDP to both sides whatever the client used.
	req.SetTransport("UDP")
	opts := []sipgo.ClientRequestOption{g.fromListener, sipgo.ClientRequestAddVia, sipgo.ClientRequestDecreaseMaxForward}
	if newCall {
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
		if newCall {
			expired = c.expired
		}
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
			success := res.StatusCode >= 200 && res.StatusCode < 300
			final := res.StatusCode >= 200
			if final {
				settle(success) // the offer's media before the answer's
			}
			if newCall {
				switch {
				case success:
					c.confirm(toTagOf(res), source(res))
					g.armTimer(c, g.cfg.AckTimeout)
				case !final:
					c.early(toTagOf(res))
				}
			}
			if len(res.Body()) > 0 && c != nil && isSDP(res) && res.StatusCode < 300 {
				body, _, err := g.rewrite(c, res.Body(), !fromInside, false)
				if err != nil {
					g.log.Warn("answer SDP not proxied", "call", c.id, "err", err)
					g.c.BadSDP.Add(1)
					res = sip.NewResponseFromRequest(orig, 502, "Bad Gateway", nil)
					success = false
				} else {
					res.SetBody(body)
				}
			}
			if newCall && success {
				c.mu.Lock()
				c.invite, c.answer = orig, res.Clone()
				c.mu.Unlock()
			}
			if newCall && final && !success {
				// Before the answer goes out: the caller may retry with the
				// same Call-ID at once (after a 401/407).
				g.endCall(c)
			}
			if newCall && final && !success && !fromInside {
				// The inside server's refusal of an outside INVITE (a
				// 401/407 challenge, 486...) goes out once too: relayed
				// through the transaction, a spoofed source would get it 11
				// times. The caller's ACK finds no transaction and is
				// dropped (the client transaction ACKed upstream); a lost
				// copy is recovered when the caller retransmits.
				g.respond(tx, orig, res)
				return
			}
			if err := tx.Respond(res); err != nil {
				g.log.Debug("relay response", "err", err)
			}
			if !final {
				continue
			}
			// Only the other side's 2xx ends a call on BYE: an answer of
			// 481 or no answer leaves it to its own timeouts.
			if isBye && success {
				g.endCall(c)
			}
			return
		case <-expired:
			// Not answered within the setup deadline: give the ports back
			// now and CANCEL upstream; the 487 goes to the caller.
			expired = nil
			g.c.SetupTimeouts.Add(1)
			g.endCall(c)
			g.spawn(func(ctx context.Context) { g.sendCancel(ctx, req) })
		case <-clTx.Done():
			if newCall {
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
				if newCall && tx.Err() != nil {
					g.endCall(c)
				}
			}
			return
		}
	}
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
