package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"

	"github.com/traverse-rtc/traverse/internal/admin"
	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cascade/relayauth"
	"github.com/traverse-rtc/traverse/internal/sfu"
)

// sfuConfig is the sfu role's section.
type sfuConfig struct {
	sfu.Config       `yaml:",inline"`
	natsClientConfig `yaml:",inline"`
	// CascadeSecretFile holds the cascade's relay secret (docs/cascade.md).
	CascadeSecretFile string `yaml:"cascade-secret-file"`
	// CascadeTokenKey is the signal role's token key: with it, relay
	// clients holding a token publish through the relay port
	// (docs/relay-protocol.md, "Clients").
	CascadeTokenKey string `yaml:"cascade-token-key"`
}

func bindSFU(fs *flag.FlagSet, prefix string, c *sfuConfig) {
	fs.TextVar(&c.UDP, prefix+"udp", c.UDP, "the one media UDP `host:port` every peer connection shares")
	fs.TextVar(&c.TCP, prefix+"tcp", c.TCP, "the one ICE-TCP listener `host:port` (empty disables ICE-TCP)")
	fs.TextVar(&c.PublicIP, prefix+"public-ip", c.PublicIP, "public `IP` put in candidates instead of the bound address (1:1 NAT, load balancer)")
	bindNATSClientFlags(fs, prefix, &c.natsClientConfig, "NATS server `URL`s, comma separated (serve: empty uses the embedded bus)")
	fs.StringVar(&c.NodeID, prefix+"node-id", c.NodeID, "node `id` on the bus (default: the node of --nats-creds, else sfu-PORT)")
	fs.StringVar(&c.Region, prefix+"region", c.Region, "`region` announced for node selection")
	fs.IntVar(&c.MaxPeers, prefix+"max-peers", 2000, "refuse joins past this many sessions")
	fs.Var(&c.DataPath, prefix+"data-path", "how media moves between the socket and the peer connections: `own` (recvmmsg/sendmmsg and the node's own SRTP in both directions; the node answers as DTLS server), pion (pion's stack, one packet per system call) or pion-batched (pion's stack over recvmmsg/sendmmsg); default own")
	fs.Var(schedulerPollFlag{&c.NoSchedulerPoll}, prefix+"scheduler-poll", "while media flows, keep one goroutine cycling through the Go scheduler (epoll_wait 5 ms, then yield): measured 25-35 % less CPU per forwarded packet; idle nodes pay nothing; on by default, --scheduler-poll=false turns it off")
	fs.DurationVar(&c.PLIInterval, prefix+"pli-interval", 0, "least `time` between keyframe requests to one publisher layer (default 500ms)")
	fs.DurationVar(&c.DrainPeriod, prefix+"drain-period", 0, "a drain (traverse sfu drain, SIGUSR1) asks its sessions to move one by one over this `duration` (default 10s)")
	fs.BoolVar(&c.DrainStay, prefix+"drain-stay", false, "keep running, idle and not ready, once a drain has moved every session (default: exit)")
	fs.TextVar(&c.CascadeListen, prefix+"cascade-listen", c.CascadeListen, "the cascade relay port `host:port`: rooms span SFU nodes (docs/cascade.md); empty (default): no cascade")
	fs.StringVar(&c.CascadeSecretFile, prefix+"cascade-secret-file", c.CascadeSecretFile, "`file` of the cascade's relay secret (at least 32 bytes, the same on every node); required with --cascade-listen")
	fs.StringVar(&c.CascadeTokenKey, prefix+"cascade-token-key", c.CascadeTokenKey, "the signal role's token `key` (its --token-key): relay clients with a token publish through the relay port (docs/relay-protocol.md); empty (default): no relay clients")
	fs.IntVar(&c.CascadeMaxClients, prefix+"cascade-max-clients", 0, "most relay clients bound at once (default 64)")
	fs.Float64Var(&c.CascadeClientRate, prefix+"cascade-client-rate", 0, "relay client frames per second from one source address, shared by the clients behind it (default 5000; negative: no limit)")
	fs.StringVar(&c.Group, prefix+"group", c.Group, "balanced group `name`: this node shares one public address (--public-ip, the same --udp port) with the group's other nodes behind a UDP load balancer and serves any session whose first STUN binding reaches it; needs --cascade-listen (docs/cascade.md); empty (default): no group")
	fs.Var(relayIDFlag{&c.CascadeID}, prefix+"cascade-id", "the node's 32-bit relay `id` (default: derived from the node id)")
}

// relayIDFlag is --cascade-id. Its String is the value set, so that
// config.Load, which sets the command line's flags again over the file
// and the environment, gets it back (a flag.Func's String is empty).
type relayIDFlag struct{ p *uint32 }

func (f relayIDFlag) String() string {
	if f.p == nil || *f.p == 0 {
		return ""
	}
	return strconv.FormatUint(uint64(*f.p), 10)
}

func (f relayIDFlag) Set(v string) error {
	n, err := strconv.ParseUint(v, 0, 32)
	if err != nil || n == 0 {
		return fmt.Errorf("relay id %q: a number from 1 to 4294967295", v)
	}
	*f.p = uint32(n)
	return nil
}

// cascadeSecret reads --cascade-secret-file into the config.
func (c *sfuConfig) cascadeSecret() error {
	if c.Group != "" && !c.CascadeListen.IsValid() {
		return errors.New("--group needs --cascade-listen (and --cascade-secret-file): docs/cascade.md")
	}
	if !c.CascadeListen.IsValid() {
		if c.CascadeSecretFile != "" {
			return errors.New("--cascade-secret-file needs --cascade-listen")
		}
		if c.CascadeTokenKey != "" {
			return errors.New("--cascade-token-key needs --cascade-listen")
		}
		return nil
	}
	if c.CascadeSecretFile == "" {
		return errors.New("--cascade-listen needs --cascade-secret-file")
	}
	b, err := os.ReadFile(c.CascadeSecretFile)
	if err != nil {
		return fmt.Errorf("--cascade-secret-file: %w", err)
	}
	b = bytes.TrimSpace(b)
	if len(b) < 32 {
		return fmt.Errorf("--cascade-secret-file %s: %d bytes, at least 32 needed", c.CascadeSecretFile, len(b))
	}
	c.CascadeSecret = b
	if c.CascadeTokenKey != "" {
		if len(c.CascadeTokenKey) < relayauth.MinKey {
			return fmt.Errorf("--cascade-token-key must be at least %d bytes", relayauth.MinKey)
		}
		c.CascadeClientAuth = relayauth.Verifier([]byte(c.CascadeTokenKey))
	}
	return nil
}

// schedulerPollFlag is --scheduler-poll (default true), stored as
// sfu.Config.NoSchedulerPoll, whose zero value is the poll on.
type schedulerPollFlag struct{ off *bool }

func (f schedulerPollFlag) String() string {
	if f.off == nil {
		return "true"
	}
	return strconv.FormatBool(!*f.off)
}

func (f schedulerPollFlag) Set(s string) error {
	on, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	*f.off = !on
	return nil
}

func (f schedulerPollFlag) IsBoolFlag() bool { return true }

func init() {
	register(command{name: "sfu", summary: "WebRTC SFU: all peer connections on one UDP port and one TCP port; sfu drain NODE moves a node's sessions off", run: runSFU})
	registerServeRole(serveRole{name: "sfu", order: 40,
		bind: func(fs *flag.FlagSet, prefix string) any {
			c := &sfuConfig{Config: sfu.Config{UDP: netip.MustParseAddrPort("127.0.0.1:7882"), TCP: netip.MustParseAddrPort("127.0.0.1:7881")}}
			bindSFU(fs, prefix, c)
			return c
		},
		start: func(ctx context.Context, env *serveEnv) (runner, error) {
			c := env.cfg["sfu"].(*sfuConfig)
			if c.NATS != "" {
				busCfg, err := c.nodeBus()
				if err != nil {
					return nil, err
				}
				return startSFU(c, busCfg, env.log, env.admin)
			}
			if c.NodeID == "" {
				// The node's credential names it before its socket is bound.
				c.NodeID = "sfu-serve"
				if c.UDP.Port() != 0 {
					c.NodeID = fmt.Sprintf("sfu-%d", c.UDP.Port())
				}
			}
			busCfg, err := env.inProcessBus("sfu "+c.NodeID, bus.RoleNode, c.NodeID)
			if err != nil {
				return nil, err
			}
			return startSFU(c, busCfg, env.log, env.admin)
		}})
}

func runSFU(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "drain" {
		return runSFUDrain(ctx, args[1:])
	}
	type file struct {
		common    `yaml:",inline"`
		sfuConfig `yaml:",inline"`
	}
	cfg := file{common: common{Admin: "127.0.0.1:9094"}}
	fs := newFlagSet("sfu", "sfu --udp ADDR --tcp ADDR [--public-ip IP] --nats URL[,URL...] [flags]\n       traverse sfu drain --nats URL --nats-creds SIGNAL.creds [--period D] NODE")
	cfg.flags(fs)
	bindSFU(fs, "", &cfg.sfuConfig)
	log, err := loadFlags(fs, args, &cfg, &cfg.common)
	if err != nil {
		return err
	}
	if cfg.NATS == "" {
		return errors.New("--nats is required")
	}
	busCfg, err := cfg.nodeBus()
	if err != nil {
		return err
	}
	adm := admin.New(log)
	run, err := startSFU(&cfg.sfuConfig, busCfg, log, adm)
	if err != nil {
		return err
	}
	err = runWithAdmin(ctx, log, adm, &cfg.common, run)
	if errors.Is(err, errDrained) {
		log.Info("sfu drained: exiting")
		return nil
	}
	return err
}

// nodeBus is the bus.Config of a separate node process. A credentials file
// written by "traverse bus" names its node: the node id defaults to it, and
// another --node-id is an error (the bus would refuse the node's subjects).
func (c *sfuConfig) nodeBus() (bus.Config, error) {
	if c.NATSCreds != "" {
		if id, err := bus.LoadIdentity(c.NATSCreds); err == nil {
			if id.Role != bus.RoleNode {
				return bus.Config{}, fmt.Errorf("--nats-creds %s: a %s credential, not a node's", c.NATSCreds, id.Role)
			}
			if c.NodeID == "" {
				c.NodeID = id.Node
			}
			if c.NodeID != id.Node {
				return bus.Config{}, fmt.Errorf("--node-id %s, but --nats-creds %s is node %s's", c.NodeID, c.NATSCreds, id.Node)
			}
		} else if !errors.Is(err, bus.ErrCredentials) {
			return bus.Config{}, fmt.Errorf("--nats-creds: %w", err)
		}
	}
	return c.busClient("sfu " + c.NodeID), nil
}

func startSFU(c *sfuConfig, busCfg bus.Config, log *slog.Logger, adm *admin.Server) (runner, error) {
	if err := c.cascadeSecret(); err != nil {
		return nil, err
	}
	bc, err := bus.Connect(busCfg, log)
	if err != nil {
		return nil, err
	}
	cfg := c.Config
	cfg.Bus, cfg.Log, cfg.Registerer = bc, log, adm.Registry
	s, err := sfu.New(cfg)
	if err != nil {
		bc.Close()
		return nil, err
	}
	adm.AddCheck("sfu-bus", func() error {
		if !bc.Conn().IsConnected() {
			return errors.New("bus disconnected")
		}
		return nil
	})
	if err := registerBusCounters(adm.Registry, "sfu", bc); err != nil {
		s.Close()
		bc.Close()
		return nil, err
	}
	adm.AddCheck("sfu-draining", func() error {
		if s.Draining() {
			return errDraining
		}
		return nil
	})
	return func(ctx context.Context) error {
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); drainOnSIGUSR1(sctx, s) }()
		err := s.Run(ctx)
		cancel()
		<-done
		bc.Close()
		if err == nil && ctx.Err() == nil && s.Draining() {
			// Drained and empty: the process ends (runAll stops the
			// other runners on an error; runSFU reports success).
			return errDrained
		}
		return err
	}, nil
}
