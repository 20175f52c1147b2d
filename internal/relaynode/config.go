// Package relaynode is traverse's relay node (the path sequence's second step; `traverse
// relay`): a machine, a CDN node's or a volunteer's behind its own NAT, that
// relays datagrams between the two peers of a session that signaling
// granted, when they cannot reach each other directly but both reach it.
//
// At start it learns its public address (a STUN binding from its relay
// port) and its NAT's mapping and filtering behaviour (client/nat against
// the configured RFC 5780 STUN servers), then announces itself on the bus
// (bus.RelayAnnounce: id, region, public address, NAT behaviour, caps and
// load) every second. Peers bind to a session side with a grant signed by
// signal (package relayproto); the node forwards data frames between the
// two bound addresses only and drops, and counts, everything else. Payloads
// are opaque: peers encrypt end to end (client/p2p). One UDP port, read and
// written in batches through internal/udpio. See docs/relay.md.
package relaynode

import (
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/config"
)

// Defaults.
const (
	DefaultListenPort = 3490
	// DefaultMaxSessions caps a node's sessions; DefaultVolunteerSessions
	// a volunteer's.
	DefaultMaxSessions       = 10000
	DefaultVolunteerSessions = 8
	// DefaultVolunteerBitrate caps a volunteer's relayed bits per second
	// (both directions of every session together); a node has no cap by
	// default.
	DefaultVolunteerBitrate = 4_000_000
	DefaultSessionIdle      = 30 * time.Second
	DefaultRebindAfter      = 5 * time.Second
	DefaultBindRate         = 20
	DefaultKeepalive        = 15 * time.Second
	DefaultDiscoverTimeout  = 10 * time.Second
)

// Config is a relay node's configuration; zero values take the defaults.
type Config struct {
	// ID names the node on the bus and in its grants (bus.ValidName).
	ID string `yaml:"id"`
	// Region is where the node is ("eu-west"); signal offers nodes of the
	// peers' region first.
	Region string `yaml:"region"`
	// Listen is the relay UDP port; default 0.0.0.0:3490.
	Listen netip.AddrPort `yaml:"listen"`
	// STUN are RFC 5780 STUN servers (host:port): the first that answers
	// gives the NAT behaviour, and the relay port's public address and
	// keepalives go to it. Empty: no discovery; the node says it has no
	// NAT and its public address is Public (or Listen).
	STUN []string `yaml:"stun"`
	// Public overrides the announced public address (a node with a
	// known public address and no STUN server).
	Public netip.AddrPort `yaml:"public"`
	// GrantKey is signal's Ed25519 public key: grants it does not verify
	// are dropped. Required.
	GrantKey ed25519.PublicKey `yaml:"-"`
	// Volunteer marks a node on a user's own machine: announced as such,
	// with the volunteer caps as defaults.
	Volunteer bool `yaml:"volunteer"`
	// MaxSessions caps the sessions held (DefaultMaxSessions, or
	// DefaultVolunteerSessions for a volunteer; negative: no cap). A new
	// session's bind beyond it is refused ("sessions_full").
	MaxSessions int `yaml:"max-sessions"`
	// MaxBitrate caps the relayed bits per second, a token bucket with
	// Burst bytes (0: none for a node, DefaultVolunteerBitrate for a
	// volunteer; negative: none). Datagrams over it are dropped
	// ("bandwidth").
	MaxBitrate int64 `yaml:"max-bitrate"`
	// Burst is the token bucket's depth in bytes (0: a quarter second of
	// MaxBitrate, at least 16 KiB).
	Burst int `yaml:"burst"`
	// SessionIdle removes a session neither side sent on for this long
	// (default 30 s).
	SessionIdle time.Duration `yaml:"session-idle"`
	// HalfSessionTTL removes a session whose second side has not bound
	// this long after the first did (default 10 s): one peer holding a
	// grant cannot pin one of a volunteer's few slots alone.
	HalfSessionTTL time.Duration `yaml:"half-session-ttl"`
	// RebindAfter is how long a bound side must be silent before a bind
	// from another address may take it over (a peer's NAT rebinding);
	// before, such a bind is dropped as "hijack" (default 5 s).
	RebindAfter time.Duration `yaml:"rebind-after"`
	// BindRate is the binds per second whose grant the node checks per
	// source IPv4 address or IPv6 /64 (an Ed25519 verification costs
	// ~50 us); the rest are dropped ("bind_rate"). Default 20, burst
	// twice that.
	BindRate int `yaml:"bind-rate"`
	// Keepalive is how often the relay port sends a STUN binding to the
	// STUN server (keeps a NAT mapping and learns a changed public
	// address); default 15 s, negative: never.
	Keepalive time.Duration `yaml:"keepalive"`
	// DiscoverTimeout bounds the NAT discovery at start (default 10 s).
	DiscoverTimeout time.Duration `yaml:"discover-timeout"`
	// DiscoverRTO is the discovery's first STUN retransmission timeout
	// (default 100 ms; 4 attempts, so a test whose answer a NAT filters
	// away costs 1.5 s).
	DiscoverRTO time.Duration `yaml:"discover-rto"`
	// Batch is the datagrams per system call (udpio.DefaultBatch when 0).
	Batch int `yaml:"batch"`

	// Bus is where the node announces itself; no URLs: no bus (tests).
	Bus bus.Config `yaml:"-"`
	// BusClient, when set, is used instead of connecting as Bus says
	// (in-process callers; the node does not close it).
	BusClient *bus.Client `yaml:"-"`
	// Log and Registerer receive logs and metrics (default: discarded, a
	// private registry).
	Log        *slog.Logger          `yaml:"-"`
	Registerer prometheus.Registerer `yaml:"-"`
}

func (c *Config) validate() error {
	if !bus.ValidName(c.ID) {
		return fmt.Errorf("%w: id %q: %w", ErrConfig, c.ID, bus.ErrBadSubjectToken)
	}
	if len(c.Region) > 64 {
		return fmt.Errorf("%w: region longer than 64 bytes", ErrConfig)
	}
	if len(c.GrantKey) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: no grant key (signal's Ed25519 public key)", ErrConfig)
	}
	if !c.Listen.IsValid() {
		c.Listen = netip.AddrPortFrom(netip.IPv4Unspecified(), DefaultListenPort)
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = DefaultMaxSessions
		if c.Volunteer {
			c.MaxSessions = DefaultVolunteerSessions
		}
	}
	if c.MaxBitrate == 0 && c.Volunteer {
		c.MaxBitrate = DefaultVolunteerBitrate
	}
	if c.MaxBitrate > 0 && c.Burst <= 0 {
		c.Burst = max(int(c.MaxBitrate/8/4), 16<<10)
	}
	config.Default(&c.SessionIdle, DefaultSessionIdle)
	config.Default(&c.HalfSessionTTL, 10*time.Second)
	config.Default(&c.RebindAfter, DefaultRebindAfter)
	config.Default(&c.BindRate, DefaultBindRate)
	if c.Keepalive == 0 {
		c.Keepalive = DefaultKeepalive
	}
	config.Default(&c.DiscoverRTO, 100*time.Millisecond)
	config.Default(&c.DiscoverTimeout, DefaultDiscoverTimeout)
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	return nil
}
