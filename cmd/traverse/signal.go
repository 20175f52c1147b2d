package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/admin"
	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cluster"
	"github.com/traverse-rtc/traverse/internal/config"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/web"
)

// signalConfig is the signal role's configuration.
type signalConfig struct {
	HTTP           netip.AddrPort `yaml:"http"`
	TokenKey       string         `yaml:"token-key"`
	DemoTokens     bool           `yaml:"demo-tokens"`
	Region         string         `yaml:"region"`
	RegionMap      []string       `yaml:"region-map"`
	RegionNear     []string       `yaml:"region-near"`
	NoDirectory    bool           `yaml:"no-room-directory"`
	Cascade        bool           `yaml:"cascade"`
	TrustedProxies []string       `yaml:"trusted-proxy"`
	NodeCapacity   int            `yaml:"node-capacity"`
	ICEURLs        []string       `yaml:"ice-url"`
	NoWeb          bool           `yaml:"no-web"`
	P2P            bool           `yaml:"p2p"`
	RelayGrantSeed string         `yaml:"relay-grant-seed"`

	// natsClientConfig is the bus of a separate signal process (not in serve).
	natsClientConfig `yaml:",inline"`
	// TLS, TURN credentials, room API, webhooks (signal_product.go).
	signalProductConfig `yaml:",inline"`

	// HTTP server limits (signal.Config; 0 takes its default).
	AllowedOrigins    []string      `yaml:"allowed-origins"`
	ReadHeaderTimeout time.Duration `yaml:"read-header-timeout"`
	IdleTimeout       time.Duration `yaml:"idle-timeout"`
	JoinTimeout       time.Duration `yaml:"join-timeout"`
	MaxConns          int           `yaml:"max-conns"`
	MaxConnsPerAddr   int           `yaml:"max-conns-per-addr"`
}

func bindSignalFlags(fs *flag.FlagSet, prefix string, c *signalConfig, inServe bool) {
	fs.TextVar(&c.HTTP, prefix+"http", c.HTTP, "HTTP `host:port` serving the WebSocket signaling (/ws) and the demo page (/)")
	if !inServe {
		bindNATSClientFlags(fs, prefix, &c.natsClientConfig, "NATS server `URL`s, comma-separated, of the bus the SFU nodes are on")
	}
	fs.StringVar(&c.TokenKey, prefix+"token-key", c.TokenKey, "HMAC-SHA256 `key` that signs access tokens (at least 16 bytes; in serve, empty picks a random one)")
	fs.BoolVar(&c.DemoTokens, prefix+"demo-tokens", c.DemoTokens, "serve GET /token?room=R, minting a token for anyone who asks (local demos only)")
	fs.StringVar(&c.Region, prefix+"region", c.Region, "`region` of clients no --region-map rule matches (empty: no region preference)")
	fs.Var(config.Strings{P: &c.RegionMap}, prefix+"region-map", "`PREFIX=REGION`: clients in PREFIX prefer nodes of REGION (repeatable)")
	fs.Var(config.Strings{P: &c.RegionNear}, prefix+"region-near", "`REGION=NEAR1,NEAR2`: clients of REGION go to NEAR1, then NEAR2, when REGION has no node with capacity (repeatable; unlisted regions come last)")
	fs.BoolVar(&c.Cascade, prefix+"cascade", c.Cascade, "rooms may span SFU nodes that run the cascade (--cascade-listen): a newcomer joins its nearest, least loaded cascade node even when the room lives on another (docs/cascade.md)")
	fs.BoolVar(&c.NoDirectory, prefix+"no-room-directory", c.NoDirectory, "do not read the cluster's room directory (JetStream bucket kept by traverse controller) when placing a room")
	fs.Var(config.Strings{P: &c.TrustedProxies}, prefix+"trusted-proxy", "`PREFIX` of proxies whose X-Forwarded-For names the client (repeatable)")
	fs.IntVar(&c.NodeCapacity, prefix+"node-capacity", c.NodeCapacity, "peers at which an SFU node counts as full (0: 1000)")
	fs.Var(config.Strings{P: &c.ICEURLs}, prefix+"ice-url", "STUN or TURN `URL` handed to browsers as an ICE server, e.g. stun:stun.example.org:3478, turn:turn.example.org:3478?transport=udp (repeatable; turn: and turns: need --"+prefix+"turn-secret)")
	fs.BoolVar(&c.NoWeb, prefix+"no-web", c.NoWeb, "do not serve the demo page")
	fs.BoolVar(&c.P2P, prefix+"p2p", c.P2P, "rooms of two go peer to peer (browser to browser, ICE with --"+prefix+"ice-url STUN then TURN) and move into the SFU when a third joins (docs/signal.md)")
	fs.StringVar(&c.RelayGrantSeed, prefix+"relay-grant-seed", c.RelayGrantSeed, "Ed25519 `seed` (base64url, traverse relay --keygen) that signs relay node grants: serves POST /relay/nodes (empty: off)")
	fs.Var(config.Strings{P: &c.AllowedOrigins}, prefix+"allowed-origins", "`ORIGIN` (scheme://host[:port]) whose pages may use /ws and /token, * for any (repeatable; default: this server's own loopback or IP address and port)")
	fs.DurationVar(&c.ReadHeaderTimeout, prefix+"read-header-timeout", c.ReadHeaderTimeout, "close an HTTP connection whose request headers take longer than this `duration` (0: 10s)")
	fs.DurationVar(&c.IdleTimeout, prefix+"idle-timeout", c.IdleTimeout, "close a keep-alive HTTP connection idle this `duration` (0: 30s)")
	fs.DurationVar(&c.JoinTimeout, prefix+"join-timeout", c.JoinTimeout, "close a WebSocket that has not sent a join within this `duration` (0: 10s)")
	fs.IntVar(&c.MaxConns, prefix+"max-conns", c.MaxConns, "most HTTP and WebSocket `connections` open at once (0: 10000; in serve, at most the role's descriptor budget)")
	fs.IntVar(&c.MaxConnsPerAddr, prefix+"max-conns-per-addr", c.MaxConnsPerAddr, "most `connections` open at once from one client address, IPv6 /64 (0: 100; --trusted-proxy peers are exempt)")
	bindSignalProductFlags(fs, prefix, &c.signalProductConfig)
}

// signalRole is a running signal role.
type signalRole struct {
	srv *signal.Server
	be  *signal.BusBackend
	bc  *bus.Client
}

// startSignal connects to the bus as busCfg says and binds the HTTP
// listener; the role's main loop is its run method. turn, when set,
// supplies TURN URLs and credentials.
func startSignal(c *signalConfig, busCfg bus.Config, ice *iceShare, log *slog.Logger, adm *admin.Server) (*signalRole, error) {
	key := []byte(c.TokenKey)
	if len(key) < 16 {
		return nil, fmt.Errorf("%s must be at least 16 bytes", c.flag("token-key"))
	}
	if err := c.checkLimits(); err != nil {
		return nil, err
	}
	product := signal.Config{Listen: c.HTTP}
	if err := c.signalProductConfig.apply(&product, c.ICEURLs, ice, adm.Registry); err != nil {
		return nil, err
	}
	var rules []signal.RegionRule
	for _, s := range c.RegionMap {
		r, err := signal.ParseRegionRule(s)
		if err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	var trusted []netip.Prefix
	for _, s := range c.TrustedProxies {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("%s %q: %w", c.flag("trusted-proxy"), s, err)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		trusted = append(trusted, p)
	}
	near := map[string][]string{}
	for _, s := range c.RegionNear {
		r, list, err := signal.ParseRegionNear(s)
		if err != nil {
			return nil, err
		}
		near[r] = list
	}
	bc, err := bus.Connect(busCfg, log)
	if err != nil {
		return nil, err
	}
	be, err := signal.NewBusBackend(bc, c.NodeCapacity)
	if err != nil {
		_ = bc.Close()
		return nil, err
	}
	cfg := signal.Config{Listen: c.HTTP, Key: key, Backend: be, DemoTokens: c.DemoTokens, Region: c.Region, RegionRules: rules,
		RegionNear: near, Cascade: c.Cascade,
		TrustedProxies: trusted, Log: log, Registerer: adm.Registry,
		AllowedOrigins: c.AllowedOrigins, ReadHeaderTimeout: c.ReadHeaderTimeout, IdleTimeout: c.IdleTimeout,
		JoinTimeout: c.JoinTimeout, MaxConns: c.MaxConns, MaxConnsPerAddr: c.MaxConnsPerAddr, P2P: c.P2P}
	if !c.NoWeb {
		cfg.Static = web.FS
	}
	if !c.NoDirectory {
		cfg.Directory = roomDirectory{cluster.NewDirectory(bc.Conn())}
	}
	cfg.ICEServers, cfg.TLS, cfg.API = product.ICEServers, product.TLS, product.API
	if c.RelayGrantSeed != "" {
		if err := mountRelayService(&cfg, c.RelayGrantSeed, bc, adm); err != nil {
			_ = be.Close()
			_ = bc.Close()
			return nil, err
		}
	}
	srv, err := signal.New(cfg)
	if err != nil {
		_ = be.Close()
		_ = bc.Close()
		return nil, err
	}
	refused := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "traverse_signal_group_claims_refused_total",
		Help: "Balanced group claims refused: a second node's claim of a session already won, or a claim by a node the session was not offered to (docs/cascade.md)."},
		func() float64 { return float64(be.RefusedClaims()) })
	err = registerBusCounters(adm.Registry, "signal", bc)
	if err == nil {
		err = adm.Registry.Register(refused)
	}
	if err != nil {
		_ = srv.Close()
		_ = be.Close()
		_ = bc.Close()
		return nil, err
	}
	adm.AddCheck("signal", srv.Ready)
	return &signalRole{srv: srv, be: be, bc: bc}, nil
}

// addr is the HTTP listener's address.
func (r *signalRole) addr() string { return r.srv.Addr().String() }

// run serves until ctx is done: the sessions end first (they leave their
// rooms over the bus), then the backend and the bus connection.
func (r *signalRole) run(ctx context.Context) error {
	err := r.srv.Run(ctx)
	_ = r.be.Close()
	_ = r.bc.Close()
	return err
}

type signalCmdConfig struct {
	common       `yaml:",inline"`
	signalConfig `yaml:",inline"`
}

func runSignal(ctx context.Context, args []string) error {
	cfg := signalCmdConfig{common: common{Admin: "127.0.0.1:9780"}, signalConfig: signalConfig{HTTP: netip.MustParseAddrPort("127.0.0.1:7880")}}
	fs := newFlagSet("signal", "signal --http ADDR --nats URL[,URL...] --token-key KEY [flags]")
	cfg.common.flags(fs)
	bindSignalFlags(fs, "", &cfg.signalConfig, false)
	log, err := loadFlags(fs, args, &cfg, &cfg.common)
	if err != nil {
		return err
	}
	busCfg := cfg.busClient("signal")
	if len(busCfg.URLs) == 0 {
		return errors.New("--nats is required")
	}
	return runAlone(ctx, log, &cfg.common, func(adm *admin.Server) (runner, error) {
		role, err := startSignal(&cfg.signalConfig, busCfg, nil, log.With("role", "signal"), adm)
		if err != nil {
			return nil, err
		}
		return role.run, nil
	})
}

// roomDirectory is the cluster's room directory as signal reads it: where
// a room lives (RoomNode, for joins) and every room (ListRooms, for the
// room API).
type roomDirectory struct{ *cluster.Directory }

func (d roomDirectory) ListRooms(ctx context.Context) ([]signal.DirectoryRoom, error) {
	recs, err := d.Rooms(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]signal.DirectoryRoom, 0, len(recs))
	for _, r := range recs {
		dr := signal.DirectoryRoom{Name: r.Room, Node: r.Node, Participants: r.Participants, Nodes: make(map[string]int, len(r.Nodes))}
		for _, n := range r.Nodes {
			dr.Nodes[n.Node] = n.Participants
		}
		if len(r.Nodes) == 0 && r.Node != "" {
			dr.Nodes[r.Node] = r.Participants // a record from before rooms spanned nodes
		}
		out = append(out, dr)
	}
	return out, nil
}

func init() {
	register(command{name: "signal", summary: "WebSocket signaling for the SFU (tokens, SDP, node choice) and the demo page", run: runSignal})
	registerServeRole(serveRole{
		name:  "signal",
		order: 50,
		bind: func(fs *flag.FlagSet, prefix string) any {
			c := &signalConfig{HTTP: netip.MustParseAddrPort("127.0.0.1:7880"), DemoTokens: true}
			bindSignalFlags(fs, prefix, c, true)
			return c
		},
		start: func(_ context.Context, env *serveEnv) (runner, error) {
			c := env.cfg["signal"].(*signalConfig)
			busCfg, err := env.inProcessBus("signal", bus.RoleSignal, "")
			if err != nil {
				return nil, err
			}
			if c.TokenKey == "" {
				b := make([]byte, 32)
				_, _ = rand.Read(b)
				c.TokenKey = hex.EncodeToString(b)
				env.log.Info("signal: random token key for this process (set --signal-token-key to mint tokens with traverse token)")
			}
			serveAdminToken(c, env.log)
			c.MaxConns = env.budgeted("signal", c.MaxConns, signal.DefaultMaxConns)
			role, err := startSignal(c, busCfg, env.ice, env.log.With("role", "signal"), env.admin)
			if err != nil {
				return nil, err
			}
			return role.run, nil
		},
	})
}
