package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/traverse-rtc/traverse/internal/admin"
	"github.com/traverse-rtc/traverse/internal/config"
	"github.com/traverse-rtc/traverse/internal/kfast/turnchannel"
	"github.com/traverse-rtc/traverse/internal/tlsutil"
	"github.com/traverse-rtc/traverse/internal/turn"
)

// turnConfig is the turn role's configuration (flags, YAML, environment).
type turnConfig struct {
	Listen             string        `yaml:"listen"`
	NoTCP              bool          `yaml:"no-tcp"`
	NoDTLS             bool          `yaml:"no-dtls"`
	TLSListen          string        `yaml:"tls-listen"`
	TLSCert            string        `yaml:"tls-cert"`
	TLSKey             string        `yaml:"tls-key"`
	Realm              string        `yaml:"realm"`
	Users              []string      `yaml:"user"`
	UsersFile          string        `yaml:"users-file"`
	AuthSecret         string        `yaml:"auth-secret"`
	RelayIP            string        `yaml:"relay-ip"`
	RelayPorts         string        `yaml:"relay-ports"`
	AllowLoopbackPeers bool          `yaml:"allow-loopback-peers"`
	AllowPeers         []string      `yaml:"allow-peer"`
	DenyPeers          []string      `yaml:"deny-peer"`
	MaxAllocations     int           `yaml:"max-allocations"`
	UserQuota          int           `yaml:"user-quota"`
	Bandwidth          int64         `yaml:"bandwidth"`
	AuthFailures       int           `yaml:"auth-failures-per-minute"`
	Shards             int           `yaml:"shards"`
	Coalesce           time.Duration `yaml:"coalesce"`
	NoRawSend          bool          `yaml:"no-raw-send"`
	MaxConns           int           `yaml:"max-conns"`
	MaxConnsPerSource  int           `yaml:"max-conns-per-source"`
	StreamAuthTimeout  time.Duration `yaml:"stream-auth-timeout"`
	StreamIdleTimeout  time.Duration `yaml:"stream-idle-timeout"`
	AllocationRate     int           `yaml:"allocation-rate"`
	AuthFailuresSource int           `yaml:"auth-failures-per-source"`
	RESTMaxLifetime    time.Duration `yaml:"rest-max-lifetime"`
	UnauthAnswerRate   int           `yaml:"unauth-answer-rate"`
	Offload            string        `yaml:"offload"`
	// own are the other listeners of a serve process (not a flag).
	own []netip.AddrPort
	// prefix is the flags' prefix ("turn-" in serve), for errors that name
	// the flag.
	prefix string
}

// flag names the flag of key as the operator types it.
func (c *turnConfig) flag(key string) string { return "--" + c.prefix + key }

// bindTurnFlags registers the turn role's flags under prefix ("" for
// "traverse turn", "turn-" inside serve). serve is true inside serve, whose
// defaults are a local demo.
func bindTurnFlags(fs *flag.FlagSet, prefix string, c *turnConfig, serve bool) {
	c.prefix = prefix
	fs.StringVar(&c.Listen, prefix+"listen", c.Listen, "UDP and TCP `host:port` clients reach")
	fs.BoolVar(&c.NoTCP, prefix+"no-tcp", c.NoTCP, "do not listen on TCP")
	fs.StringVar(&c.TLSListen, prefix+"tls-listen", c.TLSListen, "TLS-over-TCP `host:port`, also DTLS over UDP on the same port (empty: neither)")
	fs.BoolVar(&c.NoDTLS, prefix+"no-dtls", c.NoDTLS, "no DTLS listener on the TLS port")
	fs.StringVar(&c.TLSCert, prefix+"tls-cert", c.TLSCert, "TLS certificate PEM `file` (default: a self-signed certificate made at start)")
	fs.StringVar(&c.TLSKey, prefix+"tls-key", c.TLSKey, "TLS private key PEM `file`")
	fs.StringVar(&c.Realm, prefix+"realm", c.Realm, "long-term credential realm")
	fs.Var(config.Strings{P: &c.Users}, prefix+"user", "a user `NAME:PASSWORD` (repeatable)")
	fs.StringVar(&c.UsersFile, prefix+"users-file", c.UsersFile, "`file` of NAME:PASSWORD lines, reloaded on SIGHUP")
	fs.StringVar(&c.AuthSecret, prefix+"auth-secret", c.AuthSecret, "shared `secret` for TURN REST time-limited credentials (username EXPIRY[:user], password base64(HMAC-SHA1(secret, username)))")
	fs.StringVar(&c.RelayIP, prefix+"relay-ip", c.RelayIP, "`IP` relay sockets bind and allocations advertise (default: the listen IP)")
	fs.StringVar(&c.RelayPorts, prefix+"relay-ports", c.RelayPorts, "relay port range `LOW-HIGH`; one port per allocation")
	bindLoopbackFlag(fs, prefix+"allow-loopback-peers", &c.AllowLoopbackPeers, "allow relaying to loopback peers (local tests only; logs a warning)", serve)
	fs.Var(config.Strings{P: &c.AllowPeers}, prefix+"allow-peer", "peer `CIDR` to allow even if refused by default (repeatable)")
	fs.Var(config.Strings{P: &c.DenyPeers}, prefix+"deny-peer", "peer `CIDR` to refuse always (repeatable)")
	fs.IntVar(&c.MaxAllocations, prefix+"max-allocations", c.MaxAllocations, "allocations in total (0: 10000; -1: unlimited); beyond: 486")
	fs.IntVar(&c.UserQuota, prefix+"user-quota", c.UserQuota, "allocations per user name, a REST name being one credential (0: 100; -1: unlimited); beyond: 486")
	fs.IntVar(&c.AllocationRate, prefix+"allocation-rate", c.AllocationRate, "new allocations per second per source address (IPv6: per /64), bursts of 5 s worth (0: 20; -1: unlimited); beyond: 486")
	fs.Int64Var(&c.Bandwidth, prefix+"bandwidth", c.Bandwidth, "relayed `bytes` per second per allocation and direction (0: unlimited); excess is dropped")
	fs.IntVar(&c.MaxConns, prefix+"max-conns", c.MaxConns, "open TCP, TLS and DTLS client connections (0: 10000); beyond, new ones are closed")
	fs.IntVar(&c.MaxConnsPerSource, prefix+"max-conns-per-source", c.MaxConnsPerSource, "open TCP, TLS and DTLS client connections per source address (IPv6: per /64) (0: 100; -1: unlimited)")
	fs.DurationVar(&c.StreamAuthTimeout, prefix+"stream-auth-timeout", c.StreamAuthTimeout, "close a TCP/TLS/DTLS client connection with no authenticated request this long after it opened (0: 10s; negative: never)")
	fs.DurationVar(&c.StreamIdleTimeout, prefix+"stream-idle-timeout", c.StreamIdleTimeout, "close a TCP/TLS/DTLS client connection without an allocation that sent nothing this long (0: 2m; negative: never)")
	fs.IntVar(&c.AuthFailures, prefix+"auth-failures-per-minute", c.AuthFailures, "failed authentications per source address and user name per minute before requests for that name are dropped (0: 30; -1: no limit)")
	fs.IntVar(&c.AuthFailuresSource, prefix+"auth-failures-per-source", c.AuthFailuresSource, "failed authentications per source address per minute over all names before all its requests are dropped (0: 10 times --auth-failures-per-minute; -1: no limit)")
	fs.DurationVar(&c.RESTMaxLifetime, prefix+"rest-max-lifetime", c.RESTMaxLifetime, "refuse REST credentials whose expiry is further ahead than this (0: 24h; negative: no cap)")
	fs.IntVar(&c.UnauthAnswerRate, prefix+"unauth-answer-rate", c.UnauthAnswerRate, "answers per second per source address to unauthenticated requests (401, 438, errors, Binding), bursts of 5 s worth; beyond, they are dropped (0: 50; -1: unlimited)")
	fs.IntVar(&c.Shards, prefix+"shards", c.Shards, "UDP event loops, each with its own SO_REUSEPORT socket on the listen port and its own relay sockets (default 1)")
	fs.DurationVar(&c.Coalesce, prefix+"coalesce", c.Coalesce, "under load, wait this long between event-loop wake-ups so one batch serves every queued packet (adds at most this delay; 0 disables)")
	fs.BoolVar(&c.NoRawSend, prefix+"no-raw-send", c.NoRawSend, "send ChannelData from UDP clients to IPv4 peers with one sendto per packet, not in one sendmmsg per batch through a raw socket (which needs CAP_NET_RAW; without it sendto is used anyway)")
	fs.StringVar(&c.Offload, prefix+"offload", c.Offload, "kernel fast path for channels of UDP clients: ebpf or off (ebpf needs root, Linux 6.6+ or a clsact-capable kernel, IPv4 and a specific listen address; see docs/turn.md)")
}

// serverConfig turns the flags into a turn.Config.
func (c *turnConfig) serverConfig(log *slog.Logger, reg *admin.Server) (turn.Config, error) {
	cfg := turn.Config{Realm: c.Realm, AuthSecret: c.AuthSecret, NoTCP: c.NoTCP, NoDTLS: c.NoDTLS, AllowLoopbackPeers: c.AllowLoopbackPeers,
		MaxAllocations: c.MaxAllocations, MaxAllocationsPerUser: c.UserQuota, BandwidthPerAllocation: c.Bandwidth,
		AuthFailuresPerMinute: c.AuthFailures, Shards: c.Shards, Coalesce: c.Coalesce, NoRawSend: c.NoRawSend, MaxStreamConns: c.MaxConns, Software: "traverse", Log: log,
		MaxStreamConnsPerSource: c.MaxConnsPerSource, StreamAuthTimeout: c.StreamAuthTimeout, StreamIdleTimeout: c.StreamIdleTimeout,
		AllocationRate: c.AllocationRate, AuthFailuresPerSource: c.AuthFailuresSource, RESTMaxLifetime: c.RESTMaxLifetime,
		UnauthAnswerRate: c.UnauthAnswerRate, OwnEndpoints: c.own}
	if reg != nil {
		cfg.Registerer = reg.Registry
	}
	var err error
	if cfg.Listen, err = netip.ParseAddrPort(c.Listen); err != nil {
		return cfg, fmt.Errorf("%s: %w", c.flag("listen"), err)
	}
	if c.Shards < 0 {
		return cfg, fmt.Errorf("%s %d: want 1 or more (0: 1)", c.flag("shards"), c.Shards)
	}
	if c.TLSListen != "" {
		if cfg.TLSListen, err = netip.ParseAddrPort(c.TLSListen); err != nil {
			return cfg, fmt.Errorf("%s: %w", c.flag("tls-listen"), err)
		}
		if c.TLSCert != "" || c.TLSKey != "" {
			if cfg.TLS, err = tlsutil.ServerConfig(c.TLSCert, c.TLSKey, "traverse turn"); err != nil {
				return cfg, fmt.Errorf("%s, %s: %w", c.flag("tls-cert"), c.flag("tls-key"), err)
			}
		}
	}
	if c.RelayIP != "" {
		if cfg.RelayIP, err = netip.ParseAddr(c.RelayIP); err != nil {
			return cfg, fmt.Errorf("%s: %w", c.flag("relay-ip"), err)
		}
	}
	if c.RelayPorts != "" {
		lo, hi, ok := strings.Cut(c.RelayPorts, "-")
		l, err1 := strconv.ParseUint(lo, 10, 16)
		h, err2 := strconv.ParseUint(hi, 10, 16)
		if !ok || err1 != nil || err2 != nil {
			return cfg, fmt.Errorf("%s: want LOW-HIGH, got %q", c.flag("relay-ports"), c.RelayPorts)
		}
		cfg.RelayPortLow, cfg.RelayPortHigh = uint16(l), uint16(h)
	}
	for _, p := range c.AllowPeers {
		pf, err := netip.ParsePrefix(p)
		if err != nil {
			return cfg, fmt.Errorf("%s: %w", c.flag("allow-peer"), err)
		}
		cfg.AllowPeers = append(cfg.AllowPeers, pf)
	}
	for _, p := range c.DenyPeers {
		pf, err := netip.ParsePrefix(p)
		if err != nil {
			return cfg, fmt.Errorf("%s: %w", c.flag("deny-peer"), err)
		}
		cfg.DenyPeers = append(cfg.DenyPeers, pf)
	}
	cfg.Users = map[string]string{}
	for _, u := range c.Users {
		name, pass, err := turn.ParseUser(u)
		if err != nil {
			return cfg, fmt.Errorf("%s: %w", c.flag("user"), err)
		}
		if pass == "" {
			return cfg, fmt.Errorf("%s %s: empty password (anyone could use the relay as %s)", c.flag("user"), name, name)
		}
		cfg.Users[name] = pass
	}
	cfg.UsersFile = c.UsersFile
	if c.AuthSecret != "" && len(c.AuthSecret) < 16 {
		return cfg, fmt.Errorf("%s: at least 16 bytes (a short secret can be guessed from one credential)", c.flag("auth-secret"))
	}
	if c.Realm == "" {
		return cfg, fmt.Errorf("%s is required", c.flag("realm"))
	}
	if len(c.Users) == 0 && c.UsersFile == "" && c.AuthSecret == "" {
		return cfg, fmt.Errorf("no credentials: give %s NAME:PASSWORD, %s or %s", c.flag("user"), c.flag("users-file"), c.flag("auth-secret"))
	}
	return cfg, nil
}

// iceShare is what serve's STUN and TURN roles tell its signal role: the
// ICE servers browsers are handed and how to mint their TURN credentials.
type iceShare struct {
	// STUN are STUN server URLs ("stun:127.0.0.1:3478"), from serve's stun role.
	STUN []string
	// URLs are TURN server URLs ("turn:127.0.0.1:3479?transport=udp").
	URLs []string
	// user and pass are a static credential (the demo user), used when no
	// shared secret is set.
	user, pass, secret string
}

// Credentials returns a user name and password for a browser: minted from
// the shared secret and valid for ttl when one is set, else the static
// user's.
func (t *iceShare) Credentials(user string, ttl time.Duration) (string, string) {
	if t.secret != "" {
		return turn.RESTCredentials(t.secret, user, ttl, time.Now())
	}
	return t.user, t.pass
}

// startTurn binds the server and returns its runner, which also reloads
// the users file on SIGHUP.
func startTurn(c *turnConfig, log *slog.Logger, adm *admin.Server) (*turn.Server, runner, error) {
	cfg, err := c.serverConfig(log, adm)
	if err != nil {
		return nil, nil, err
	}
	var off *turnchannel.Offloader
	switch c.Offload {
	case "", "off":
	case "ebpf":
		if off, err = turnchannel.New(turnchannel.Config{}); err != nil {
			return nil, nil, fmt.Errorf("--offload ebpf: %w", err)
		}
		cfg.Offloader = off
	default:
		return nil, nil, fmt.Errorf("--offload %q: want ebpf or off", c.Offload)
	}
	// Ask for SIGHUP before serving, so that no reload signal can find
	// the default action (exit) once clients are served.
	hup := make(chan os.Signal, 1)
	if c.UsersFile != "" {
		signal.Notify(hup, syscall.SIGHUP)
		cfg.ReloadUsers = hup
	}
	s, err := turn.New(cfg)
	if err != nil {
		signal.Stop(hup)
		if off != nil {
			off.Close()
		}
		return nil, nil, err
	}
	if adm != nil {
		adm.AddCheck("turn", func() error { return nil })
	}
	run := func(ctx context.Context) error {
		if off != nil {
			// After the server: its Close removes every flow first.
			defer off.Close()
		}
		defer signal.Stop(hup)
		return s.Run(ctx)
	}
	return s, run, nil
}

// fill records the TURN server's URLs and credentials. A listener on an
// unspecified address (0.0.0.0, ::) names no host a browser can reach: the
// relay IP stands in when it is specific, else the listener is left out
// with a warning (--ice-url names public URLs).
func (t *iceShare) fill(c *turnConfig, s *turn.Server, log *slog.Logger) {
	alt, _ := netip.ParseAddr(c.RelayIP)
	add := func(scheme string, a netip.AddrPort, transport string) {
		if h, ok := iceHostPort(a, alt); ok {
			t.URLs = append(t.URLs, scheme+":"+h+"?transport="+transport)
		} else if a.IsValid() {
			log.Warn("turn: listening on an unspecified address, so browsers are handed no URL for it; set --turn-listen or --turn-relay-ip to a specific address, or --signal-ice-url", "listen", a)
		}
	}
	add("turn", s.Addr(), "udp")
	add("turn", s.TCPAddr(), "tcp")
	add("turns", s.TLSAddr(), "tcp")
	t.secret = c.AuthSecret
	if len(c.Users) > 0 {
		t.user, t.pass, _ = strings.Cut(c.Users[0], ":")
	}
}

// iceHostPort is the host:port of an ICE server URL for listener a: a
// itself, or alt's address at a's port when a's is unspecified; false
// when neither names a reachable host.
func iceHostPort(a netip.AddrPort, alt netip.Addr) (string, bool) {
	switch {
	case !a.IsValid():
		return "", false
	case !a.Addr().IsUnspecified():
		return a.String(), true
	case alt.IsValid() && !alt.IsUnspecified():
		return netip.AddrPortFrom(alt, a.Port()).String(), true
	}
	return "", false
}

func init() {
	register(command{name: "turn", summary: "TURN relay server (RFC 8656) over UDP, TCP and TLS, with TCP relays (RFC 6062)", run: runTurn})
	registerServeRole(serveRole{
		name:  "turn",
		order: 20,
		bind: func(fs *flag.FlagSet, prefix string) any {
			c := &turnConfig{Listen: "127.0.0.1:3479", Realm: "traverse", Users: []string{"demo:demo"}, AllowLoopbackPeers: true, Offload: "off"}
			bindTurnFlags(fs, prefix, c, true)
			return c
		},
		start: func(_ context.Context, env *serveEnv) (runner, error) {
			c := env.cfg["turn"].(*turnConfig)
			c.own = env.own
			c.MaxConns = env.budgeted("turn", c.MaxConns, turn.DefaultMaxStreamConns)
			s, run, err := startTurn(c, env.log, env.admin)
			if err != nil {
				return nil, err
			}
			if env.ice != nil {
				env.ice.fill(c, s, env.log)
			}
			return run, nil
		},
	})
}

type turnCommandConfig struct {
	common     `yaml:",inline"`
	turnConfig `yaml:",inline"`
}

func runTurn(ctx context.Context, args []string) error {
	cfg := turnCommandConfig{turnConfig: turnConfig{Listen: "127.0.0.1:3478", Offload: "off"}}
	fs := newFlagSet("turn", "turn --listen 127.0.0.1:3478 --realm REALM --user NAME:PASSWORD [--user ...] [--auth-secret SECRET] [flags]")
	cfg.common.flags(fs)
	bindTurnFlags(fs, "", &cfg.turnConfig, false)
	log, err := loadFlags(fs, args, &cfg, &cfg.common)
	if err != nil {
		return err
	}
	return runAlone(ctx, log, &cfg.common, func(adm *admin.Server) (runner, error) {
		_, run, err := startTurn(&cfg.turnConfig, log, adm)
		return run, err
	})
}
