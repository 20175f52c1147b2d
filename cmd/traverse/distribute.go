package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/traverse-rtc/traverse/internal/admin"
	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/config"
	"github.com/traverse-rtc/traverse/internal/distribute"
	"github.com/traverse-rtc/traverse/internal/kfast/distribution"
)

// distributeConfig is "traverse distribute": the media distribution server (one stream to many receivers).
type distributeConfig struct {
	common           `yaml:",inline"`
	natsClientConfig `yaml:",inline"`

	Listen             []string      `yaml:"listen"`
	API                string        `yaml:"api"`
	APIToken           string        `yaml:"api-token"`
	APIRate            float64       `yaml:"api-rate"`
	APIBurst           int           `yaml:"api-burst"`
	NodeID             string        `yaml:"node-id"`
	MaxStreams         int           `yaml:"max-streams"`
	MaxReceivers       int           `yaml:"max-receivers"`
	RTCPTimeout        time.Duration `yaml:"rtcp-timeout"`
	UnreachableTimeout time.Duration `yaml:"unreachable-timeout"`
	Batch              int           `yaml:"batch"`
	Path               string        `yaml:"path"`
	EBPFInterfaces     []string      `yaml:"ebpf-interface"`
	EBPFClsact         bool          `yaml:"ebpf-clsact"`
	AllowLoopback      bool          `yaml:"allow-loopback-receivers"`
	AllowReceivers     []string      `yaml:"allow-receiver"`
	DenyReceivers      []string      `yaml:"deny-receiver"`
}

func bindDistribute(fs *flag.FlagSet, c *distributeConfig) {
	fs.Var(config.Strings{P: &c.Listen}, "listen", "UDP `host:port` streams arrive at, one socket each (repeatable; default "+distribute.DefaultListen+")")
	fs.StringVar(&c.API, "api", c.API, "control API HTTP `host:port` (empty disables it; requires --api-token)")
	fs.StringVar(&c.APIToken, "api-token", c.APIToken, "bearer `token` of the control API (better in TRAVERSE_API_TOKEN or the config file than on the command line)")
	fs.Float64Var(&c.APIRate, "api-rate", c.APIRate, "control requests per second per source address (HTTP) and for the whole bus (0: 20, negative: no limit); the rest are refused and counted")
	fs.IntVar(&c.APIBurst, "api-burst", c.APIBurst, "control requests one source may send at once (0: twice --api-rate)")
	bindNATSClientFlags(fs, "", &c.natsClientConfig, "NATS server `URL`s, comma separated, to take requests on traverse.distribute.NODE.rpc (empty: no bus)")
	fs.StringVar(&c.NodeID, "node-id", c.NodeID, "node `id` on the bus (default: the node of --nats-creds, else distribute-PORT)")
	fs.IntVar(&c.MaxStreams, "max-streams", c.MaxStreams, "most streams in the table (0: 1024)")
	fs.IntVar(&c.MaxReceivers, "max-receivers", c.MaxReceivers, "most receivers of one stream (0: 64): each is one more datagram sent per packet")
	fs.DurationVar(&c.RTCPTimeout, "rtcp-timeout", c.RTCPTimeout, "remove a receiver that sent no RTCP for this `duration` (0: 30s, negative: never, for receivers that send none)")
	fs.DurationVar(&c.UnreachableTimeout, "unreachable-timeout", c.UnreachableTimeout, "remove a receiver this `duration` after an ICMP port unreachable with no RTCP since (0: 5s, negative: never)")
	fs.IntVar(&c.Batch, "batch", c.Batch, "datagrams per recvmmsg system call (0: 64)")
	fs.StringVar(&c.Path, "path", c.Path, "data `path`: auto (the kernel's tc program where it loads and every --listen is a specific IPv4 address, else user space), ebpf (fail if it cannot load) or userspace; the one in use is logged and exported as traverse_distribute_path_info")
	fs.Var(config.Strings{P: &c.EBPFInterfaces}, "ebpf-interface", "interface `name` the tc program is attached to (repeatable; default every interface that is up)")
	fs.BoolVar(&c.EBPFClsact, "ebpf-clsact", c.EBPFClsact, "attach the tc program to a clsact qdisc even where TCX is available")
	bindLoopbackFlag(fs, "allow-loopback-receivers", &c.AllowLoopback, "allow receivers on loopback addresses (labs and local tests; logs a warning)", false)
	fs.Var(config.Strings{P: &c.AllowReceivers}, "allow-receiver", "receiver `CIDR` to allow even if refused by default (private networks in a lab; repeatable)")
	fs.Var(config.Strings{P: &c.DenyReceivers}, "deny-receiver", "receiver `CIDR` to refuse always (repeatable)")
}

// serverConfig builds distribute.Config from the flags.
func (c *distributeConfig) serverConfig(log *slog.Logger, adm *admin.Server) (distribute.Config, error) {
	cfg := distribute.Config{MaxStreams: c.MaxStreams, MaxReceivers: c.MaxReceivers, RTCPTimeout: c.RTCPTimeout,
		UnreachableTimeout: c.UnreachableTimeout, Batch: c.Batch, Log: log, Registerer: adm.Registry}
	for _, l := range c.Listen {
		for _, s := range strings.Split(l, ",") {
			a, err := netip.ParseAddrPort(strings.TrimSpace(s))
			if err != nil {
				return cfg, fmt.Errorf("listen: %w", err)
			}
			cfg.Listen = append(cfg.Listen, a)
		}
	}
	cfg.Policy.Loopback = c.AllowLoopback
	for _, p := range c.AllowReceivers {
		pf, err := netip.ParsePrefix(p)
		if err != nil {
			return cfg, fmt.Errorf("allow-receiver: %w", err)
		}
		cfg.Policy.Allow = append(cfg.Policy.Allow, pf)
	}
	for _, p := range c.DenyReceivers {
		pf, err := netip.ParsePrefix(p)
		if err != nil {
			return cfg, fmt.Errorf("deny-receiver: %w", err)
		}
		cfg.Policy.Deny = append(cfg.Policy.Deny, pf)
	}
	return cfg, nil
}

// busNode returns the node id and bus config, or ok false without --nats.
func (c *distributeConfig) busNode(port uint16) (string, bus.Config, bool, error) {
	if c.NATS == "" {
		return "", bus.Config{}, false, nil
	}
	node := c.NodeID
	if c.NATSCreds != "" {
		if id, err := bus.LoadIdentity(c.NATSCreds); err == nil {
			if id.Role != bus.RoleDistribute {
				return "", bus.Config{}, false, fmt.Errorf("--nats-creds %s: a %s credential, not a distribute node's", c.NATSCreds, id.Role)
			}
			if node != "" && node != id.Node {
				return "", bus.Config{}, false, fmt.Errorf("--node-id %s, but --nats-creds %s is node %s's", node, c.NATSCreds, id.Node)
			}
			node = id.Node
		} else if !errors.Is(err, bus.ErrCredentials) {
			return "", bus.Config{}, false, fmt.Errorf("--nats-creds: %w", err)
		}
	}
	if node == "" {
		node = fmt.Sprintf("distribute-%d", port)
	}
	if !bus.ValidName(node) {
		return "", bus.Config{}, false, fmt.Errorf("--node-id %q: %w", node, bus.ErrBadSubjectToken)
	}
	return node, c.busClient("distribute " + node), true, nil
}

// kernelPath loads the tc program as --path asks; nil for user space.
func (c *distributeConfig) kernelPath(listen []netip.AddrPort, log *slog.Logger) (distribute.Kernel, error) {
	switch c.Path {
	case "userspace":
		return nil, nil
	case "auto", "ebpf":
	default:
		return nil, fmt.Errorf("--path %q: want auto, ebpf or userspace", c.Path)
	}
	why := ""
	if len(listen) == 0 {
		why = "the default --listen is a wildcard address"
	}
	for _, a := range listen {
		if !a.Addr().Is4() || a.Addr().IsUnspecified() {
			why = fmt.Sprintf("--listen %v is not a specific IPv4 address", a)
		}
	}
	if why == "" {
		k, err := distribution.New(distribution.Config{Clsact: c.EBPFClsact, MaxStreams: c.MaxStreams, Interfaces: c.EBPFInterfaces})
		if err == nil {
			return k, nil
		}
		why = err.Error()
	}
	if c.Path == "ebpf" {
		return nil, fmt.Errorf("--path ebpf: %s", why)
	}
	log.Info("distribute: kernel path not used, serving in user space", "reason", why)
	return nil, nil
}

func startDistribute(c *distributeConfig, log *slog.Logger, adm *admin.Server) (runner, error) {
	if c.API != "" && c.APIToken == "" {
		return nil, errors.New("--api needs --api-token (or TRAVERSE_API_TOKEN); --api '' disables the HTTP API")
	}
	cfg, err := c.serverConfig(log.With("role", "distribute"), adm)
	if err != nil {
		return nil, err
	}
	if c.AllowLoopback {
		log.Warn("distribute: loopback receivers allowed (--allow-loopback-receivers): for labs and local tests only")
	}
	if cfg.Kernel, err = c.kernelPath(cfg.Listen, log); err != nil {
		return nil, err
	}
	s, err := distribute.New(cfg)
	if err != nil {
		return nil, err
	}
	api, err := distribute.NewAPI(s, distribute.APIConfig{Token: c.APIToken, Rate: c.APIRate, Burst: c.APIBurst}, adm.Registry)
	if err != nil {
		s.Close()
		return nil, err
	}
	adm.AddCheck("distribute", s.Ready)
	log.Info("distribute: data path", "path", s.Path(), "listen", s.Addrs())
	var stops []func()
	fail := func(err error) (runner, error) {
		for _, f := range stops {
			f()
		}
		s.Close()
		return nil, err
	}
	var hs *http.Server
	var ln net.Listener
	if c.API != "" {
		if ln, err = net.Listen("tcp", c.API); err != nil {
			return fail(fmt.Errorf("api: %w", err))
		}
		hs = &http.Server{Handler: api, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
			WriteTimeout: 10 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10}
		stops = append(stops, func() { ln.Close() })
		log.Info("distribute: control API", "addr", ln.Addr().String())
	}
	node, busCfg, withBus, err := c.busNode(s.Addrs()[0].Port())
	if err != nil {
		return fail(err)
	}
	if withBus {
		bc, err := bus.Connect(busCfg, log)
		if err != nil {
			return fail(err)
		}
		stops = append(stops, func() { bc.Close() })
		if _, err := api.HandleBus(bc, node); err != nil {
			return fail(err)
		}
		adm.AddCheck("distribute-bus", func() error {
			if !bc.Conn().IsConnected() {
				return errors.New("bus disconnected")
			}
			return nil
		})
		log.Info("distribute: bus requests", "subject", bus.DistributeSubject(node))
	}
	return func(ctx context.Context) error {
		errc := make(chan error, 1)
		if hs != nil {
			go func() {
				if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
					errc <- err
				}
				close(errc)
			}()
		} else {
			close(errc)
		}
		err := s.Run(ctx)
		if hs != nil {
			sctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = hs.Shutdown(sctx)
			cancel()
		}
		if herr := <-errc; err == nil {
			err = herr
		}
		for _, f := range stops {
			f()
		}
		return err
	}, nil
}

func runDistribute(ctx context.Context, args []string) error {
	cfg := distributeConfig{common: common{Admin: "127.0.0.1:9482"}, API: "127.0.0.1:8095", Path: "auto"}
	fs := newFlagSet("distribute", "distribute [--listen ADDR]... [--api ADDR --api-token TOKEN] [--nats URL] [flags]")
	cfg.flags(fs)
	bindDistribute(fs, &cfg)
	log, err := loadFlags(fs, args, &cfg, &cfg.common)
	if err != nil {
		return err
	}
	return runAlone(ctx, log, &cfg.common, func(adm *admin.Server) (runner, error) {
		return startDistribute(&cfg, log, adm)
	})
}

func init() {
	register(command{name: "distribute", summary: "media distribution server: each stream's packets to all its receivers", run: runDistribute})
}
