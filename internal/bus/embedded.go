package bus

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/logging"
)

// EmbeddedConfig configures the in-process NATS server.
type EmbeddedConfig struct {
	// Listen is "host:port"; port 0 picks a free port. Default
	// 127.0.0.1:4222.
	Listen string
	// Identities may connect, each with its role's permissions
	// (Permissions). More can be added while the server runs
	// (Embedded.Allow, Embedded.NewIdentity).
	Identities []*Identity
	// TLS, when set, makes clients connect over TLS (with ClientCAs set in
	// it and ClientAuth RequireAndVerifyClientCert, mutual TLS).
	TLS *tls.Config
	// NoAuth accepts clients without credentials, with every permission:
	// the bus of before authentication. Refused on a non-loopback Listen
	// unless NoAuthAnyAddress is also set.
	NoAuth bool
	// NoAuthAnyAddress allows NoAuth on an address other hosts can reach.
	// Anyone who reaches the port then reads every session's SDP, speaks
	// for any node and joins any room.
	NoAuthAnyAddress bool
	// MaxConns bounds the connections the server holds, authenticated or
	// not (an unauthenticated one for at most 2 s); beyond it new ones are
	// closed at once (traverse_bus_connections shows the count, against
	// traverse_bus_max_connections). Default 1024: the bus's share of the
	// process's descriptors, so a connection flood on the bus port cannot
	// take the descriptors of serve's other roles. Each role holds one
	// connection.
	MaxConns int
	// ServerName names this server in a cluster (JetStream identifies its
	// peers by it): unique per node and stable across restarts. Default
	// "traverse".
	ServerName string
	// Cluster, when Cluster.Listen is set, makes the server one node of a
	// cluster (routes with a shared secret).
	Cluster ClusterConfig
	// JetStreamDir, when set, enables JetStream with its file store in
	// this directory: the key-value buckets of the node registry, the room
	// directory and controller leadership (docs/cluster.md). Required
	// with a cluster.
	JetStreamDir string
	// Log receives the server's own messages (rate-limited); nil discards.
	Log *slog.Logger
	// Registerer takes the bus metrics (traverse_bus_*); nil skips them.
	Registerer prometheus.Registerer
}

// DefaultMaxConns is EmbeddedConfig.MaxConns's default.
const DefaultMaxConns = 1024

// Embedded is a nats-server running inside this process: the bus of
// "traverse serve", of "traverse bus" and of tests.
type Embedded struct {
	ns   *server.Server
	auth *authenticator // nil with NoAuth
	m    *embeddedMetrics
	// insecure is why the server's traffic can be read or forged by
	// others on the network ("" when it listens on loopback, or uses TLS
	// and authentication).
	insecure string
}

// StartEmbedded starts a NATS server as cfg says. Clients need one of the
// server's identities (nkey signature of the server's nonce) unless NoAuth.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:4222"
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	host, port, err := splitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("bus: embedded listen %q: %w", cfg.Listen, err)
	}
	if err := checkFree("listen", cfg.Listen); err != nil {
		return nil, err
	}
	if cfg.Cluster.Listen != "" {
		if err := checkFree("cluster listen", cfg.Cluster.Listen); err != nil {
			return nil, err
		}
		if cfg.JetStreamDir == "" {
			return nil, fmt.Errorf("%w: a cluster node needs a JetStream directory (the shared state lives there)", ErrCluster)
		}
	}
	if cfg.ServerName == "" {
		cfg.ServerName = "traverse"
	}
	loopback := isLoopbackHost(host)
	if cfg.NoAuth && !loopback && !cfg.NoAuthAnyAddress {
		return nil, fmt.Errorf("%w (%s): give the roles credentials, or set the explicit opt-in", ErrInsecure, cfg.Listen)
	}
	m, err := newEmbeddedMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	opts := &server.Options{
		ServerName: cfg.ServerName,
		Host:       host,
		Port:       port,
		NoSigs:     true,
		// No monitoring port.
		HTTPPort:   0,
		MaxPayload: 1 << 20,
		MaxConn:    cfg.MaxConns,
	}
	if err := cfg.Cluster.apply(opts); err != nil {
		return nil, err
	}
	if cfg.JetStreamDir != "" {
		opts.JetStream = true
		opts.StoreDir = cfg.JetStreamDir
	}
	e := &Embedded{m: m}
	if !cfg.NoAuth {
		e.auth = &authenticator{m: m, users: map[string]*Identity{}}
		for _, id := range cfg.Identities {
			e.auth.allow(id)
		}
		opts.CustomClientAuthentication = e.auth
		opts.AuthTimeout = 2 // seconds an unauthenticated connection is held
	}
	// The nonce each nkey signs; sent with NoAuth too, so that roles given
	// credentials still connect (nats.go refuses an nkey without one).
	opts.AlwaysEnableNonce = true
	if cfg.TLS != nil {
		opts.TLSConfig = cfg.TLS
		opts.TLS = true
		opts.TLSVerify = cfg.TLS.ClientAuth == tls.RequireAndVerifyClientCert
		opts.TLSTimeout = 2
	}
	switch {
	case loopback:
	case cfg.NoAuth:
		e.insecure = "no authentication on a non-loopback address: anyone who reaches it reads and forges every message"
	case cfg.TLS == nil:
		e.insecure = "no TLS on a non-loopback address: SDP, room names and identities cross the network in clear text"
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("bus: embedded server: %w", err)
	}
	ns.SetLoggerV2(&serverLog{log: logging.Bounded(log, cfg.Registerer), m: m}, false, false, false)
	go ns.Start() // Start returns once listening; it owns its goroutines until Shutdown.
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, fmt.Errorf("bus: embedded server on %s not ready", cfg.Listen)
	}
	e.ns = ns
	m.maxConns.Set(float64(cfg.MaxConns))
	if cfg.Registerer != nil {
		err := cfg.Registerer.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "traverse_bus_connections",
			Help: "Connections the embedded bus holds now, authenticated or not.",
		}, func() float64 { return float64(ns.NumClients()) }))
		if err != nil {
			ns.Shutdown()
			ns.WaitForShutdown()
			return nil, fmt.Errorf("bus: metrics: %w", err)
		}
	}
	if e.insecure != "" {
		m.insecure.Set(1)
		log.Warn("bus: "+e.insecure, "listen", cfg.Listen)
	}
	return e, nil
}

// isLoopbackHost reports whether host (an IP or a name) can only be reached
// from this host. Names other than localhost count as reachable.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// Insecure says why others on the network could read or forge the bus's
// messages, "" when they cannot.
func (e *Embedded) Insecure() string { return e.insecure }

// Allow lets id connect from now on.
func (e *Embedded) Allow(id *Identity) {
	if e.auth != nil {
		e.auth.allow(id)
	}
}

// NewIdentity generates an identity for role (and node) and allows it:
// the credential of an in-process role.
func (e *Embedded) NewIdentity(role Role, node string) (*Identity, error) {
	id, err := NewIdentity(role, node)
	if err != nil {
		return nil, err
	}
	e.Allow(id)
	return id, nil
}

// URL returns the server's client URL.
func (e *Embedded) URL() string { return e.ns.ClientURL() }

// Addr returns the address the server listens on.
func (e *Embedded) Addr() netip.AddrPort {
	if a, ok := e.ns.Addr().(*net.TCPAddr); ok {
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// ClusterAddr returns the address the route port listens on (invalid
// without a cluster).
func (e *Embedded) ClusterAddr() netip.AddrPort {
	if a := e.ns.ClusterAddr(); a != nil {
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// Routes returns how many route connections to peers the server holds.
func (e *Embedded) Routes() int { return e.ns.NumRoutes() }

// JetStreamReady reports whether JetStream is enabled and, in a cluster,
// has a meta leader (buckets can be made).
func (e *Embedded) JetStreamReady() bool {
	if !e.ns.JetStreamEnabled() {
		return false
	}
	if e.ns.JetStreamIsClustered() {
		return e.ns.JetStreamIsLeader() || e.ns.JetStreamIsCurrent()
	}
	return true
}

// Close shuts the server down and waits for it. It is idempotent.
func (e *Embedded) Close() error {
	e.ns.Shutdown()
	e.ns.WaitForShutdown()
	return nil
}

// embeddedMetrics are one embedded server's counters.
type embeddedMetrics struct {
	authFailures prometheus.Counter
	logins       *prometheus.CounterVec
	violations   prometheus.Counter
	insecure     prometheus.Gauge
	maxConns     prometheus.Gauge
}

func newEmbeddedMetrics(reg prometheus.Registerer) (*embeddedMetrics, error) {
	m := &embeddedMetrics{
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "traverse_bus_auth_failures_total",
			Help: "Connections to the embedded bus refused: no credentials, an unknown key, a bad signature or a connection type other than a client.",
		}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "traverse_bus_logins_total",
			Help: "Connections to the embedded bus accepted, by role.",
		}, []string{"role"}),
		violations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "traverse_bus_permission_violations_total",
			Help: "Publishes and subscriptions the embedded bus refused because the connection's role may not use the subject.",
		}),
		insecure: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "traverse_bus_insecure_listen",
			Help: "1 when the embedded bus listens on a non-loopback address without TLS (or without authentication).",
		}),
		maxConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "traverse_bus_max_connections",
			Help: "Connections the embedded bus holds at most (max-conns); new ones beyond are closed at once.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.authFailures, m.logins, m.violations, m.insecure, m.maxConns} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("bus: metrics: %w", err)
		}
	}
	return m, nil
}

// serverLog passes nats-server's messages to slog, counting permission
// violations. A client that sends garbage or is refused in a loop must not
// flood the log: the messages go, under one message ("bus: nats-server";
// their text in the attribute "text"), through internal/logging's
// flood-proof handler (logging.Bounded), which samples and cuts them.
type serverLog struct {
	log *slog.Logger
	m   *embeddedMetrics
}

func (l *serverLog) emit(level slog.Level, format string, v []any) {
	msg := fmt.Sprintf(format, v...)
	if strings.Contains(msg, "Violation") && !strings.Contains(msg, "Authorization") {
		l.m.violations.Inc()
		level = slog.LevelDebug
	}
	l.log.Log(context.Background(), level, "bus: nats-server", "text", msg)
}

func (l *serverLog) Noticef(format string, v ...any) { l.emit(slog.LevelDebug, format, v) }
func (l *serverLog) Warnf(format string, v ...any)   { l.emit(slog.LevelWarn, format, v) }
func (l *serverLog) Fatalf(format string, v ...any)  { l.emit(slog.LevelError, format, v) }
func (l *serverLog) Errorf(format string, v ...any)  { l.emit(slog.LevelWarn, format, v) }
func (l *serverLog) Debugf(format string, v ...any)  { l.emit(slog.LevelDebug, format, v) }
func (l *serverLog) Tracef(format string, v ...any)  { l.emit(slog.LevelDebug, format, v) }
