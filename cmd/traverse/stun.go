package main

import (
	"context"
	"flag"
	"net/netip"

	"github.com/traverse-rtc/traverse/internal/admin"
	"github.com/traverse-rtc/traverse/internal/config"
	"github.com/traverse-rtc/traverse/internal/stun"
)

// stunFlags binds the stun role's flags under prefix ("" standalone,
// "stun-" inside serve) to cfg, whose values are the defaults shown.
func stunFlags(fs *flag.FlagSet, prefix string, cfg *stun.Config) {
	fs.TextVar(&cfg.Listen, prefix+"listen", cfg.Listen, "UDP and TCP `host:port` of STUN Binding requests")
	fs.TextVar(&cfg.OtherAddress, prefix+"other-address", cfg.OtherAddress, "second IP `address`: turns on the RFC 5780 NAT discovery server (4 UDP sockets); empty disables it")
	fs.IntVar(&cfg.OtherPort, prefix+"other-port", cfg.OtherPort, "RFC 5780 alternate `port` (0: listen port + 1)")
	fs.BoolVar(&cfg.NoTCP, prefix+"no-tcp", cfg.NoTCP, "do not listen on TCP")
	fs.TextVar(&cfg.TLSListen, prefix+"tls-listen", cfg.TLSListen, "STUN over TLS `host:port` (empty disables it)")
	fs.StringVar(&cfg.TLSCert, prefix+"tls-cert", cfg.TLSCert, "TLS certificate PEM `file` (empty with tls-key empty: a self-signed one is generated)")
	fs.StringVar(&cfg.TLSKey, prefix+"tls-key", cfg.TLSKey, "TLS private key PEM `file`")
	fs.StringVar(&cfg.Software, prefix+"software", cfg.Software, "SOFTWARE attribute `value` (empty or \"-\": none, the default: each byte of an answer is one a spoofed request reflects)")
	fs.IntVar(&cfg.Readers, prefix+"readers", cfg.Readers, "UDP reader goroutines, each on its own SO_REUSEPORT socket (0: one per two CPUs)")
	fs.IntVar(&cfg.Batch, prefix+"batch", cfg.Batch, "datagrams per recvmmsg/sendmmsg system call (0: 64)")
	fs.IntVar(&cfg.MaxTCPConns, prefix+"max-tcp-conns", cfg.MaxTCPConns, "most concurrent TCP and TLS connections (0: 1024)")
	fs.IntVar(&cfg.MaxTCPConnsPerAddr, prefix+"max-tcp-conns-per-addr", cfg.MaxTCPConnsPerAddr, "most concurrent TCP and TLS connections from one IPv4 address or IPv6 /64 (0: 32)")
	fs.DurationVar(&cfg.FirstMessageTimeout, prefix+"first-message-timeout", cfg.FirstMessageTimeout, "close a TCP or TLS connection with no request answered this long after accept, TLS handshake included (0: 10s)")
	fs.DurationVar(&cfg.IdleTimeout, prefix+"idle-timeout", cfg.IdleTimeout, "close a TCP or TLS connection idle this long after its last answer (0: 60s)")
	fs.IntVar(&cfg.Rate, prefix+"rate", cfg.Rate, "requests per second answered per source IPv4 address or IPv6 /64; the rest are dropped and counted (0: 100, negative: no limit)")
	fs.IntVar(&cfg.RateBurst, prefix+"rate-burst", cfg.RateBurst, "requests one source may send at once before --rate applies (0: twice --rate)")
	fs.StringVar(&cfg.Offload, prefix+"offload", cfg.Offload, "answer Binding requests without attributes in the kernel: `ebpf` (tc program; root, IPv4, no --software; not rate-limited) or off (default)")
	fs.Var(config.Strings{P: &cfg.OffloadInterfaces}, prefix+"offload-interface", "interface `name` the kernel path is attached to (repeatable; default every interface that is up)")
}

// startSTUN binds the STUN server and returns its main loop.
func startSTUN(cfg stun.Config, env *serveEnv) (runner, error) {
	cfg.Log, cfg.Registerer = env.log.With("role", "stun"), env.admin.Registry
	s, err := stun.New(cfg)
	if err != nil {
		return nil, err
	}
	env.admin.AddCheck("stun", s.Ready)
	if env.ice != nil {
		if h, ok := iceHostPort(s.Addr(), netip.Addr{}); ok {
			env.ice.STUN = append(env.ice.STUN, "stun:"+h)
		} else {
			env.log.Warn("stun: listening on an unspecified address, so browsers are handed no STUN URL; set --stun-listen to a specific address, or --signal-ice-url", "listen", s.Addr())
		}
	}
	return s.Run, nil
}

type stunCmdConfig struct {
	common      `yaml:",inline"`
	stun.Config `yaml:",inline"`
}

func runSTUN(ctx context.Context, args []string) error {
	cfg := stunCmdConfig{
		common: common{Admin: "127.0.0.1:9478"},
		Config: stun.Config{Listen: netip.MustParseAddrPort("0.0.0.0:3478")},
	}
	fs := newFlagSet("stun", "stun [flags]")
	cfg.flags(fs)
	stunFlags(fs, "", &cfg.Config)
	log, err := loadFlags(fs, args, &cfg, &cfg.common)
	if err != nil {
		return err
	}
	return runAlone(ctx, log, &cfg.common, func(adm *admin.Server) (runner, error) {
		return startSTUN(cfg.Config, &serveEnv{log: log, admin: adm})
	})
}

func init() {
	register(command{name: "stun", summary: "STUN server (RFC 8489; RFC 5780 NAT discovery with --other-address)", run: runSTUN})
	registerServeRole(serveRole{
		name:  "stun",
		order: 10,
		bind: func(fs *flag.FlagSet, prefix string) any {
			// The RFC 5780 alternate port is 3480, not the usual listen
			// port + 1: serve's TURN role listens on 127.0.0.1:3479.
			cfg := &stun.Config{Listen: netip.MustParseAddrPort("127.0.0.1:3478"), OtherAddress: netip.MustParseAddr("127.0.0.2"),
				OtherPort: 3480, TLSListen: netip.MustParseAddrPort("127.0.0.1:5349")}
			stunFlags(fs, prefix, cfg)
			return cfg
		},
		start: func(_ context.Context, env *serveEnv) (runner, error) {
			cfg := *env.cfg["stun"].(*stun.Config)
			cfg.MaxTCPConns = env.budgeted("stun", cfg.MaxTCPConns, stun.DefaultMaxTCPConns)
			return startSTUN(cfg, env)
		},
	})
}
