package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/netip"
	"os"

	"github.com/traverse-rtc/traverse/internal/admin"
	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/config"
	"github.com/traverse-rtc/traverse/internal/relaynode"
	"github.com/traverse-rtc/traverse/internal/signal"
)

// relayCmdConfig is "traverse relay": a relay node (docs/relay.md).
type relayCmdConfig struct {
	common           `yaml:",inline"`
	natsClientConfig `yaml:",inline"`
	relaynode.Config `yaml:",inline"`
	GrantKey         string `yaml:"grant-key"`
	Keygen           bool   `yaml:"-"`
}

func bindRelayFlags(fs *flag.FlagSet, c *relayCmdConfig) {
	fs.StringVar(&c.ID, "id", c.ID, "node `id` on the bus and in grants (A-Z a-z 0-9 _ -, at most 64)")
	fs.StringVar(&c.Region, "region", c.Region, "`region` of the node; signal offers nodes of the peers' region first")
	fs.TextVar(&c.Listen, "listen", c.Listen, "the relay's one UDP `host:port`")
	fs.Var(config.Strings{P: &c.STUN}, "stun", "RFC 5780 STUN server `host:port` the node learns its public address and NAT behaviour from, and sends keepalives to (repeatable; the first that answers; none: no NAT assumed)")
	fs.TextVar(&c.Public, "public", c.Public, "public `ip:port` to announce instead of the discovered one")
	fs.StringVar(&c.GrantKey, "grant-key", c.GrantKey, "signal's grant public `key` (base64url; see --keygen and signal's --relay-grant-seed)")
	fs.BoolVar(&c.Volunteer, "volunteer", c.Volunteer, "a volunteer node on a user's machine: announced as such, caps default to 8 sessions and 4 Mbit/s")
	fs.IntVar(&c.MaxSessions, "max-sessions", c.MaxSessions, "most sessions held (0: 10000, volunteer 8; negative: no cap); refusals count as dropped{reason=sessions_full}")
	fs.Int64Var(&c.MaxBitrate, "max-bitrate", c.MaxBitrate, "relayed `bits/s` cap, all sessions together, token bucket (0: none, volunteer 4000000; negative: none); drops count as dropped{reason=bandwidth}")
	fs.IntVar(&c.Burst, "burst", c.Burst, "token bucket depth in `bytes` (0: a quarter second of --max-bitrate, at least 16 KiB)")
	fs.DurationVar(&c.SessionIdle, "session-idle", c.SessionIdle, "forget a session neither peer sent on for this `duration` (0: 30s)")
	fs.DurationVar(&c.HalfSessionTTL, "half-session-ttl", c.HalfSessionTTL, "forget a session whose second peer has not bound this `duration` after the first (0: 10s)")
	fs.DurationVar(&c.RebindAfter, "rebind-after", c.RebindAfter, "a bound peer silent this `duration` may be rebound from another address (0: 5s); earlier, such binds drop as hijack")
	fs.IntVar(&c.BindRate, "bind-rate", c.BindRate, "binds per second checked per source address or /64 (0: 20)")
	fs.DurationVar(&c.Keepalive, "keepalive", c.Keepalive, "STUN keepalive `interval` from the relay port (0: 15s, negative: none)")
	fs.IntVar(&c.Batch, "batch", c.Batch, "datagrams per recvmmsg/sendmmsg (0: 64)")
	fs.BoolVar(&c.Keygen, "keygen", false, "print a new grant key pair (signal's seed, the nodes' public key) and exit")
	bindNATSClientFlags(fs, "", &c.natsClientConfig, "NATS server `URL`s, comma-separated, of the bus signal is on (empty: no bus, the node is never offered)")
}

// parseGrantKey decodes a base64url Ed25519 public key.
func parseGrantKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, errors.New("relay: --grant-key must be a base64url Ed25519 public key (traverse relay --keygen)")
	}
	return b, nil
}

// parseGrantSeed decodes a base64url Ed25519 seed into a private key.
func parseGrantSeed(s string) (ed25519.PrivateKey, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != ed25519.SeedSize {
		return nil, errors.New("signal: --relay-grant-seed must be a base64url Ed25519 seed (traverse relay --keygen)")
	}
	return ed25519.NewKeyFromSeed(b), nil
}

func runRelay(ctx context.Context, args []string) error {
	cfg := relayCmdConfig{common: common{Admin: "127.0.0.1:9490"},
		Config: relaynode.Config{Listen: netip.AddrPortFrom(netip.IPv4Unspecified(), relaynode.DefaultListenPort)}}
	fs := newFlagSet("relay", "relay --id ID --grant-key KEY --stun HOST:PORT --nats URL [--volunteer] [flags]")
	cfg.common.flags(fs)
	bindRelayFlags(fs, &cfg)
	log, err := loadFlags(fs, args, &cfg, &cfg.common)
	if err != nil {
		return err
	}
	if cfg.Keygen {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stdout, "relay-grant-seed: %s\ngrant-key: %s\n",
			base64.RawURLEncoding.EncodeToString(priv.Seed()), base64.RawURLEncoding.EncodeToString(pub))
		return nil
	}
	if cfg.Config.GrantKey, err = parseGrantKey(cfg.GrantKey); err != nil {
		return err
	}
	cfg.Bus = cfg.busClient("relay " + cfg.ID)
	return runAlone(ctx, log, &cfg.common, func(adm *admin.Server) (runner, error) {
		c := cfg.Config
		c.Log, c.Registerer = log.With("role", "relay"), adm.Registry
		n, err := relaynode.New(c)
		if err != nil {
			return nil, err
		}
		adm.AddCheck("relay", n.Ready)
		log.Info("relay: listening", "addr", n.Addr(), "public", n.Public(), "volunteer", c.Volunteer)
		return runThenClose(n), nil
	})
}

func init() {
	register(command{name: "relay", summary: "relay node: relays between the two peers of a session signaling granted (--volunteer: on a user's machine, capped)", run: runRelay})
}

// mountRelayService adds signal's POST /relay/nodes to cfg.
func mountRelayService(cfg *signal.Config, seed string, bc *bus.Client, adm *admin.Server) error {
	key, err := parseGrantSeed(seed)
	if err != nil {
		return err
	}
	rs, err := signal.NewRelayService(signal.RelayConfig{Bus: bc, TokenKey: cfg.Key, GrantKey: key, Log: cfg.Log, Registerer: adm.Registry})
	if err != nil {
		return err
	}
	cfg.Mounts = map[string]http.Handler{"POST /relay/nodes": rs}
	return nil
}
