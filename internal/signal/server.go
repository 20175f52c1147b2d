package signal

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/config"
	"github.com/traverse-rtc/traverse/internal/connlimit"
)

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	// Listen is the HTTP address New binds and Run serves (the WebSocket
	// at /ws, demo tokens, the static page). The zero value binds
	// nothing: the server is then an http.Handler, or is given listeners
	// with Serve.
	Listen netip.AddrPort
	// Key signs and checks tokens (HMAC-SHA256). Required; at least 16 bytes.
	Key []byte
	// Backend reaches the SFU nodes. Required.
	Backend Backend
	// DemoTokens enables GET /token?room=R&identity=I, which mints a token
	// with both rights for anyone who asks: for the local demo only, never
	// on a server reachable by strangers. Default off.
	DemoTokens bool
	// DemoTokenTTL is the lifetime of demo tokens. Default 1h.
	DemoTokenTTL time.Duration
	// ICEServers, when set, returns the STUN/TURN servers handed to a
	// joining participant (TURN credentials are minted per participant).
	ICEServers func(identity string) []ICEServer
	// P2P makes rooms of two peer to peer: the two browsers send media to
	// each other (ICE with ICEServers: STUN, then TURN) and move into the
	// SFU when a third joins, back when the room is down to two
	// (p2proom.go, docs/signal.md "Peer-to-peer rooms"). Default false:
	// every room goes through the SFU.
	P2P bool
	// Region is the region of clients no RegionRule matches. Default "" (no
	// region preference: the least loaded node wins).
	Region string
	// RegionRules map client address prefixes to regions.
	RegionRules []RegionRule
	// RegionNear lists, per client region, the regions to try in order
	// when the client's own has no node with capacity (ParseRegionNear);
	// regions not listed come after, least loaded first. Default none.
	RegionNear map[string][]string
	// Cascade lets a room span SFU nodes that run the cascade
	// (docs/cascade.md): a newcomer is placed on its nearest, least loaded
	// cascade node even when the room lives on another. Default off (a
	// room's participants meet on one node).
	Cascade bool
	// Directory, when set, is the cluster's room directory: a room that
	// lives on a node is joined there while that node has capacity, from
	// whichever signal server the client reaches (route.go).
	Directory RoomDirectory
	// TrustedProxies are the peers whose X-Forwarded-For is believed. Default
	// none: the TCP peer is the client.
	TrustedProxies []netip.Prefix
	// AllowedOrigins are the origins (scheme://host[:port], as browsers
	// send them in Origin) whose pages may open the WebSocket and fetch demo
	// tokens; "*" allows every origin (tokens are then the only gate).
	// Default: the server's own address as the connection reached it, on
	// loopback: http or https with host 127.0.0.1, localhost, [::1] or the
	// local IP literal, at the local port. A Host that merely agrees with
	// Origin is not enough: that is what a DNS-rebinding page sends. Requests
	// without Origin (clients that are not browsers) pass; refusals answer
	// 403 and count in traverse_signal_origin_refused_total.
	AllowedOrigins []string
	// ReadHeaderTimeout bounds reading a request's headers. Default 10s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection idle this long. Default
	// 30s (a browser reopens one in a round trip; each idle one holds a
	// descriptor and ~10 KB).
	IdleTimeout time.Duration
	// JoinTimeout closes a WebSocket that has not sent a join this long
	// after it opened (counted in traverse_signal_join_timeouts_total).
	// Default 10s.
	JoinTimeout time.Duration
	// MaxConns caps the TCP connections (HTTP and WebSocket) open at once
	// on listeners given to Serve. Default 10,000 (~20 KB each while
	// idle, a session more); in serve, the role's descriptor budget when
	// lower.
	MaxConns int
	// MaxConnsPerAddr caps the connections open at once from one client
	// address (IPv6: one /64). TrustedProxies are exempt. Default 100: a
	// browser holds one WebSocket and a few page connections, so this
	// admits an office NAT of some 50 users; raise it for bigger ones.
	MaxConnsPerAddr int
	// MaxMessage bounds one inbound WebSocket message. Default 64 KiB; the
	// connection is closed (status 1009) on a larger one.
	MaxMessage int64
	// MessageRate and MessageBurst bound inbound messages per connection
	// (token bucket). Defaults 20/s and 60 (an ICE gathering burst). Messages
	// over the limit are refused with a rate-limited error; a connection
	// that keeps going is closed.
	MessageRate  float64
	MessageBurst int
	// RequestTimeout bounds each request to a node. Default 10s.
	RequestTimeout time.Duration
	// Static is served at / (the demo page); nil serves nothing there.
	Static fs.FS
	// Registerer takes the metrics. Default: a private registry.
	Registerer prometheus.Registerer
	// Log defaults to slog.Default().
	Log *slog.Logger
	// Now defaults to time.Now (tests move it).
	Now func() time.Time
	// API configures the room API and webhooks (roomapi.go, docs/api.md).
	API APIConfig
	// TLS, when set, serves HTTPS and WSS on every listener (the browser's
	// getUserMedia needs a secure page off localhost). Default: plain HTTP,
	// e.g. behind a reverse proxy that ends TLS (docs/signal.md).
	TLS *tls.Config
	// Mounts are more handlers by mux pattern (RelayService at
	// "POST /relay/nodes", relay.go).
	Mounts map[string]http.Handler
}

func (c *Config) validate() error {
	if len(c.Key) < 16 {
		return fmt.Errorf("%w: token key must be at least 16 bytes", ErrConfig)
	}
	if c.Backend == nil {
		return fmt.Errorf("%w: no backend", ErrConfig)
	}
	config.Default(&c.DemoTokenTTL, time.Hour)
	config.Default(&c.MaxMessage, 64<<10)
	config.Default(&c.MessageRate, 20)
	config.Default(&c.MessageBurst, 60)
	config.Default(&c.RequestTimeout, 10*time.Second)
	config.Default(&c.ReadHeaderTimeout, 10*time.Second)
	config.Default(&c.IdleTimeout, 30*time.Second)
	config.Default(&c.JoinTimeout, 10*time.Second)
	config.Default(&c.MaxConns, DefaultMaxConns)
	config.Default(&c.MaxConnsPerAddr, DefaultMaxConnsPerAddr)
	for _, o := range c.AllowedOrigins {
		if o == "*" {
			continue
		}
		if _, err := normalizeOrigin(o); err != nil {
			return fmt.Errorf("%w: allowed origin %q: %w", ErrConfig, o, err)
		}
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c.API.validate()
}

// Default connection caps (Config.MaxConns, Config.MaxConnsPerAddr).
const (
	DefaultMaxConns        = 10000
	DefaultMaxConnsPerAddr = 100
)

// Server is the signaling HTTP service: the WebSocket endpoint /ws, the
// optional demo token endpoint /token and the static demo page.
type Server struct {
	cfg    Config
	log    *slog.Logger
	m      *metrics
	placer *placer
	rm     *routeMetrics
	mux    *http.ServeMux

	http   *http.Server
	ln     net.Listener // bound by New from Config.Listen; nil without
	lm     *connlimit.Metrics
	origin originPolicy
	reg    *registry  // the room API's view of the sessions
	pairs  p2pRoomSet // peer-to-peer rooms of two (Config.P2P, p2proom.go)
	p2pm   *p2pMetrics
	am     *apiMetrics // room API and webhooks
	hooks  *webhooks
	p2p    *p2pHub // the peer-to-peer rendezvous (p2p.go)

	ctx    context.Context // canceled by Close; parent of every session
	cancel context.CancelFunc

	mu     sync.Mutex // guards rooms, closed, down
	rooms  map[string]*roomPlace
	closed bool
	// down holds the nodes declared dead (NodeDown) until when they may
	// be chosen again, should they announce again.
	down map[string]time.Time

	wg sync.WaitGroup // sessions
}

// roomPlace is the node this server placed a room on, held while any of
// its sessions here is open.
type roomPlace struct {
	node string
	refs int
}

// New validates cfg and binds Config.Listen when set. It serves once Run
// (or Serve) is called; Close releases what New took if neither is.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	lm, err := connlimit.NewMetrics(cfg.Registerer, "signal")
	if err != nil {
		return nil, err
	}
	am, err := newAPIMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	hub, err := newP2PHub(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	p2pm, err := newP2PMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{p2p: hub, p2pm: p2pm, cfg: cfg, log: cfg.Log, m: m, placer: newPlacer(cfg.RegionRules, cfg.Region, cfg.RegionNear),
		mux: http.NewServeMux(), lm: lm, origin: newOriginPolicy(cfg.AllowedOrigins),
		ctx: ctx, cancel: cancel, rooms: map[string]*roomPlace{},
		down: map[string]time.Time{}, reg: newRegistry(), am: am}
	s.placer.cascade = cfg.Cascade
	if w, ok := cfg.Backend.(nodeWatcher); ok {
		w.OnNodeDown(s.NodeDown)
	}
	s.http = &http.Server{Handler: s.mux, ReadHeaderTimeout: cfg.ReadHeaderTimeout, IdleTimeout: cfg.IdleTimeout,
		MaxHeaderBytes: maxHeaderBytes, ErrorLog: slog.NewLogLogger(cfg.Log.Handler(), slog.LevelWarn)}
	s.mux.HandleFunc("GET /ws", s.serveWS)
	for pattern, h := range cfg.Mounts {
		s.mux.Handle(pattern, h)
	}
	if s.rm, err = newRouteMetrics(cfg.Registerer); err != nil {
		cancel()
		return nil, err
	}
	s.mux.HandleFunc("GET /v1/route", s.serveRoute)
	s.mux.HandleFunc("GET /p2p", s.serveP2P)
	if cfg.DemoTokens {
		s.mux.HandleFunc("GET /token", s.serveToken)
	}
	if cfg.Static != nil {
		s.mux.Handle("GET /", http.FileServerFS(cfg.Static))
	}
	if cfg.API.AdminToken != "" {
		s.mountAPI()
	}
	if cfg.Listen.IsValid() {
		var lc net.ListenConfig
		if s.ln, err = lc.Listen(context.Background(), "tcp", cfg.Listen.String()); err != nil {
			cancel()
			return nil, fmt.Errorf("signal: %w", err)
		}
	}
	s.hooks = newWebhooks(&s.cfg.API, am, cfg.Log, cfg.Now)
	return s, nil
}

// Addr is the address of the listener New bound (the zero value without
// Config.Listen).
func (s *Server) Addr() netip.AddrPort {
	if s.ln == nil {
		return netip.AddrPort{}
	}
	return s.ln.Addr().(*net.TCPAddr).AddrPort()
}

// Run serves Config.Listen until ctx is done or Close is called, then
// closes the server (every session leaves its room first).
func (s *Server) Run(ctx context.Context) error {
	if s.ln == nil {
		return fmt.Errorf("%w: Run needs Config.Listen", ErrConfig)
	}
	scheme := "http://"
	if s.cfg.TLS != nil {
		scheme = "https://"
	}
	s.log.Info("signal listening", "http", scheme+s.ln.Addr().String(), "demo_tokens", s.cfg.DemoTokens,
		"room_api", s.cfg.API.AdminToken != "", "webhooks", len(s.cfg.API.WebhookURLs))
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(s.ln) }()
	var err error
	served := false
	select {
	case <-ctx.Done():
	case <-s.ctx.Done():
	case err = <-errc:
		served = true
	}
	_ = s.Close()
	if !served {
		err = <-errc
	}
	return err
}

// ServeHTTP serves the signaling endpoints.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// maxHeaderBytes bounds a request's headers (net/http's default is 1 MB):
// nothing this server serves needs more than a cookie or two.
const maxHeaderBytes = 16 << 10

// Serve accepts HTTP connections on ln until Close, within the connection
// caps (MaxConns, MaxConnsPerAddr; counted in traverse_listener_*
// {listener="signal"}) and the header and idle timeouts. It returns nil
// after Close.
func (s *Server) Serve(ln net.Listener) error {
	l := connlimit.New(ln, connlimit.Limits{MaxConns: s.cfg.MaxConns, MaxConnsPerAddr: s.cfg.MaxConnsPerAddr,
		Exempt: s.cfg.TrustedProxies}, s.lm)
	var hl net.Listener = l
	if s.cfg.TLS != nil {
		hl = tls.NewListener(l, tlsForHTTP(s.cfg.TLS))
	}
	err := s.http.Serve(hl)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close ends every session (each leaves its room on its node), closes the
// listeners (New's and those given to Serve) and idle connections, and
// waits for the sessions. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = s.http.Shutdown(ctx)
	cancel()
	if s.ln != nil {
		_ = s.ln.Close() // never given to Serve: Shutdown does not know it
	}
	s.wg.Wait()
	s.hooks.close(webhookGrace) // after the sessions: their leaves are delivered
	return nil
}

// Ready reports whether any SFU node is announced.
func (s *Server) Ready() error {
	if len(s.cfg.Backend.Nodes()) == 0 {
		return ErrNoNode
	}
	return nil
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	// A DNS-rebinding page fetches /token same-origin, without an Origin
	// header: its Host (the attacker's name) is what gives it away.
	if !s.origin.allowOrigin(r) || !s.origin.allowHost(r) {
		s.m.originRefused.WithLabelValues("token").Inc()
		http.Error(w, "origin not allowed", http.StatusForbidden)
		return
	}
	room := r.URL.Query().Get("room")
	identity := r.URL.Query().Get("identity")
	if identity == "" {
		identity = "guest-" + randomID(3)
	}
	now := s.cfg.Now()
	tok, err := MintToken(s.cfg.Key, Claims{Room: room, Identity: identity, Publish: true, Subscribe: true,
		IssuedAt: now.Unix(), Expires: now.Add(s.cfg.DemoTokenTTL).Unix()})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "room must be 1-64 letters, digits, '-' or '_'; identity may add '.', '@', ':'"})
		return
	}
	s.m.demoTokens.Inc()
	_ = json.NewEncoder(w).Encode(map[string]string{"token": tok, "room": room, "identity": identity})
}

func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	conn, done := s.acceptWS(w, r)
	if conn == nil {
		return
	}
	defer done()
	ss := newSession(s, conn, clientIP(r, s.cfg.TrustedProxies))
	ss.run()
}

// acceptWS opens the WebSocket of a request to /ws or /p2p, read limit
// Config.MaxMessage, and counts it active until done is called. It
// refuses (writing the HTTP error, returning a nil conn) once the server
// closes and from an origin not allowed: coder/websocket's own check
// passes whenever Host and Origin agree, which a DNS-rebinding page
// arranges, so the origin is checked here.
func (s *Server) acceptWS(w http.ResponseWriter, r *http.Request) (conn *websocket.Conn, done func()) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return nil, nil
	}
	s.wg.Add(1)
	s.mu.Unlock()
	if !s.origin.allowOrigin(r) {
		s.wg.Done()
		s.m.originRefused.WithLabelValues("ws").Inc()
		http.Error(w, "origin not allowed", http.StatusForbidden)
		return nil, nil
	}
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		s.wg.Done()
		return nil, nil // Accept wrote the HTTP error
	}
	conn.SetReadLimit(s.cfg.MaxMessage)
	s.m.connections.Inc()
	s.m.active.Inc()
	return conn, func() {
		s.m.active.Dec()
		s.wg.Done()
	}
}

// place chooses the node for a client of room and holds the room's place.
func (s *Server) place(room string, client netip.Addr) (Node, error) {
	nodes := s.cfg.Backend.Nodes()
	roomNode, skip := s.directoryNode(room)
	nodes = without(nodes, skip)
	s.mu.Lock()
	defer s.mu.Unlock()
	nodes = s.upLocked(nodes)
	if p := s.rooms[room]; p != nil && roomNode == "" {
		roomNode = p.node
	}
	n, err := s.placer.choose(nodes, room, roomNode, client)
	if err != nil {
		return n, err
	}
	p := s.rooms[room]
	if p == nil || p.node != n.ID {
		p = &roomPlace{node: n.ID}
		s.rooms[room] = p
	}
	p.refs++
	s.m.placements.WithLabelValues(n.ID).Inc()
	return n, nil
}

// unplace releases one hold of room on node.
func (s *Server) unplace(room, node string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.rooms[room]; p != nil && p.node == node {
		if p.refs--; p.refs <= 0 {
			delete(s.rooms, room)
		}
	}
}

// tokenReason names a token error for the counter.
func tokenReason(err error) string {
	switch {
	case errors.Is(err, ErrTokenSignature):
		return "signature"
	case errors.Is(err, ErrTokenExpired):
		return "expired"
	case errors.Is(err, ErrTokenNotYetValid):
		return "not_yet_valid"
	case errors.Is(err, ErrTokenClaims):
		return "claims"
	default:
		return "malformed"
	}
}
