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
	"sync"
	"sync/atomic"
	"syscall"
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
	// SIP is the outside SIP listener (UDP). Required; port 0 picks one
	// (tests).
	SIP netip.AddrPort
	// TCP also listens for SIP over TCP on the same address.
	TCP bool
	// TLS, when valid, listens for SIP over TLS on this address (a fourth
	// outside port), with the certificate in TLSCert and TLSKey (PEM
	// files; both empty: a self-signed certificate, for tests).
	TLS             netip.AddrPort
	TLSCert, TLSKey string
	// Upstream is the inside SIP server (a name is resolved by the
	// caller, once). Required.
	Upstream netip.AddrPort
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
	if !c.SIP.IsValid() || !c.Upstream.IsValid() || c.Media == nil {
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

// New binds the SIP listener(s) and registers the gateway with its media
// proxy (its own addresses, refused as media destinations, and its media
// timeouts). Run serves them.
func New(cfg Config) (*Gateway, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	pc, ln, err := listenSIP(cfg)
	if err != nil {
		return nil, err
	}
	addr := unmap(pc.LocalAddr().(*net.UDPAddr).AddrPort())
	g := &Gateway{
		cfg: cfg, mp: cfg.Media, pc: pc, ln: ln, addr: addr, upstream: unmap(cfg.Upstream),
		calls: map[string]*call{}, bindings: map[string]*binding{},
		stop:     make(chan struct{}),
		requests: persource.NewRate(cfg.RateLimit, cfg.RateBurst),
		newCalls: persource.NewRate(cfg.CallRate, cfg.CallBurst),
		answers:  persource.NewRate(cfg.AnswerRate, cfg.AnswerBurst),
	}
	g.log = newLogger(cfg.Log, &g.c, cfg.Registerer)
	for _, step := range []func() error{g.listenStreams, g.nameSelf, g.newSIP, g.registerMetrics} {
		if err := step(); err != nil {
			g.closeSockets()
			return nil, err
		}
	}
	// Media must never be aimed at the signaling listeners.
	cfg.Media.AddOwnEndpoints(addr, g.TLSAddr())
	cfg.Media.SetOnTimeout(g.MediaTimeout)
	return g, nil
}

func unmap(ap netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) }

// listenSIP binds the SIP UDP socket and, with TCP, the TCP listener on
// the same address. With port 0 the port must be free for both: the one
// the kernel gives the UDP socket may be taken on TCP (by another
// socket's ephemeral port), so a few more are tried.
func listenSIP(cfg Config) (net.PacketConn, net.Listener, error) {
	for try := 1; ; try++ {
		pc, err := net.ListenPacket("udp", cfg.SIP.String())
		if err != nil || !cfg.TCP {
			return pc, nil, err
		}
		ln, err := net.Listen("tcp", unmap(pc.LocalAddr().(*net.UDPAddr).AddrPort()).String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		if cfg.SIP.Port() != 0 || !errors.Is(err, syscall.EADDRINUSE) || try == 10 {
			return nil, nil, err
		}
	}
}

// listenStreams caps the TCP listener and binds the TLS one, each capped
// by connlimit.
func (g *Gateway) listenStreams() error {
	cfg := &g.cfg
	lim := connlimit.Limits{MaxConns: cfg.MaxConns, MaxConnsPerAddr: cfg.MaxConnsPerAddr}
	var lm, tlm *connlimit.Metrics
	if cfg.Registerer != nil && (cfg.TCP || cfg.TLS.IsValid()) {
		var err error
		if lm, err = connlimit.NewMetrics(cfg.Registerer, "sipgw_tcp"); err == nil {
			tlm, err = connlimit.NewMetrics(cfg.Registerer, "sipgw_tls")
		}
		if err != nil {
			return err
		}
	}
	if g.ln != nil {
		g.ln = connlimit.New(g.ln, lim, lm)
	}
	if cfg.TLS.IsValid() {
		tc, err := tlsutil.ServerConfig(cfg.TLSCert, cfg.TLSKey, "traverse sipgw", cfg.TLS.Addr().String())
		if err != nil {
			return fmt.Errorf("sipgw: TLS: %w", err)
		}
		// Capped below TLS, so a refused connection costs no handshake.
		ln, err := net.Listen("tcp", cfg.TLS.String())
		if err != nil {
			return err
		}
		g.tlsLn = tls.NewListener(connlimit.New(ln, lim, tlm), tc)
	}
	return nil
}

// nameSelf picks the IP written into outside-bound SDP and the name the
// gateway puts in Via and Record-Route: the SIP address, or the outside IP
// when the listener is on a wildcard address.
func (g *Gateway) nameSelf() error {
	g.outIP = g.cfg.OutsideIP
	if !g.outIP.IsValid() {
		g.outIP = g.cfg.Media.RTPAddr().Addr()
		if g.outIP.IsUnspecified() {
			g.outIP = g.addr.Addr()
		}
	}
	g.host = g.addr.Addr().String()
	if g.addr.Addr().IsUnspecified() {
		if g.outIP.IsUnspecified() {
			return fmt.Errorf("%w: SIP listens on a wildcard address: set the outside IP", ErrConfig)
		}
		g.host = g.outIP.String()
	}
	return nil
}

// newSIP makes the sipgo user agent, server and client, and routes every
// method to its handler.
func (g *Gateway) newSIP() error {
	var err error
	g.ua, err = sipgo.NewUA(
		sipgo.WithUserAgent("traverse-sipgw"),
		sipgo.WithUserAgentHostname(g.host),
		sipgo.WithUserAgentTransactionLayerOptions(
			sip.WithTransactionLayerLogger(g.log),
			sip.WithTransactionLayerUnhandledResponseHandler(g.onStrayResponse),
		),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(g.log)),
	)
	if err != nil {
		return err
	}
	if g.srv, err = sipgo.NewServer(g.ua, sipgo.WithServerLogger(g.log)); err != nil {
		return err
	}
	// Every request leaves from the one SIP socket: no extra outside port.
	if g.client, err = sipgo.NewClient(g.ua, sipgo.WithClientHostname(g.host), sipgo.WithClientConnectionAddr(g.addr.String()), sipgo.WithClientLogger(g.log)); err != nil {
		return err
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
	return nil
}

func (g *Gateway) registerMetrics() error {
	if g.cfg.Registerer == nil {
		return nil
	}
	return g.register(g.cfg.Registerer)
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
//
// The UDP socket is served first: every request is forwarded from it, and
// sipgo finds it for that only once it serves it (before, sipgo would try
// to bind its address again, and the request got 503). The TCP and TLS
// listeners are served after that, so a request that waited in their
// backlog since New is forwarded like any other.
func (g *Gateway) Run(ctx context.Context) error {
	errc := make(chan error, 3)
	served := &servedConn{PacketConn: g.pc, ready: make(chan struct{})}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		errc <- g.srv.ServeUDP(served)
	}()
	var err error
	select {
	case <-served.ready:
	case <-ctx.Done():
	case err = <-errc:
	}
	if err == nil && ctx.Err() == nil {
		err = g.serveStreams(ctx, errc)
	}
	g.Close()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// serveStreams serves the TCP and TLS listeners and waits for ctx to end
// or any listener to fail.
func (g *Gateway) serveStreams(ctx context.Context, errc chan error) error {
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
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

// servedConn is the SIP UDP socket as sipgo serves it. sipgo adds the
// socket to its connection pool and then reads from it, so its first read
// tells Run that requests can be forwarded from the socket.
type servedConn struct {
	net.PacketConn
	once  sync.Once
	ready chan struct{}
}

func (c *servedConn) ReadFrom(b []byte) (int, net.Addr, error) {
	c.once.Do(func() { close(c.ready) })
	return c.PacketConn.ReadFrom(b)
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
