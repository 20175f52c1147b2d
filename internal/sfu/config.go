package sfu

import (
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cascade/relay"
	"github.com/traverse-rtc/traverse/internal/config"
)

// Config is an SFU node's configuration.
type Config struct {
	// UDP is the one media UDP address every peer connection shares
	// (port 0: any free port). Required.
	UDP netip.AddrPort `yaml:"udp"`
	// TCP is the one ICE-TCP listener address; zero (YAML "") disables
	// ICE-TCP.
	TCP netip.AddrPort `yaml:"tcp"`
	// PublicIP replaces the host address in the node's ICE candidates
	// (1:1 NAT, a load balancer); zero keeps the bound address.
	PublicIP netip.Addr `yaml:"public-ip"`
	// NodeID names the node on the bus (default "sfu-" + the UDP port).
	NodeID string `yaml:"node-id"`
	// Region is announced for node selection; empty is allowed.
	Region string `yaml:"region"`
	// MaxPeers refuses joins past this many sessions (StatusUnavailable);
	// default 2000.
	MaxPeers int `yaml:"max-peers"`
	// PLIInterval is the least time between two keyframe requests the SFU
	// forwards to one publisher's layer; default 500 ms. Lower gives
	// faster recovery, higher spares the publisher's encoder.
	PLIInterval time.Duration `yaml:"pli-interval"`
	// DataPath chooses how media moves between the socket and pion (see
	// DataPath); the zero value, DataPathOwn, is what the traverse command
	// runs.
	DataPath DataPath `yaml:"data-path"`
	// NoSchedulerPoll turns off the scheduler poll (schedpoll.go): while
	// the node forwards media, one goroutine waits 5 ms at a time in
	// epoll_wait and yields, measured 25-35 % less CPU per forwarded
	// packet on a 2-vCPU VM, nothing when idle. Default false (the poll
	// runs); it is independent of DataPath.
	NoSchedulerPoll bool `yaml:"no-scheduler-poll"`
	// DrainPeriod spreads a drain's rejoin messages over this long
	// (docs/failover.md): each session is asked to move at its own moment,
	// so the nodes taking them over see a ramp, not a burst of joins.
	// Default 10s; a drain request may name another period.
	DrainPeriod time.Duration `yaml:"drain-period"`
	// DrainStay keeps a drained node running (idle, not ready) once its
	// last session has left; by default Run returns then and the process
	// exits.
	DrainStay bool `yaml:"drain-stay"`
	// newRecorder, when set, gives every own-path peer connection the
	// recorder the own receive path feeds (tests).
	newRecorder func() receiveRecorder
	// pendingTTL replaces groupPendingTTL (tests).
	pendingTTL time.Duration
	// CascadeListen, when set, opens the node's cascade relay port
	// (docs/cascade.md): rooms then span nodes. Zero (the default): no
	// cascade.
	CascadeListen netip.AddrPort `yaml:"cascade-listen"`
	// CascadeSecret is the cluster's relay secret (at least 32 bytes, the
	// same on every node); required with CascadeListen.
	CascadeSecret []byte `yaml:"-"`
	// CascadeID is the node's 32-bit relay id; 0 derives it from NodeID
	// (RelayID).
	CascadeID uint32 `yaml:"cascade-id"`
	// CascadeClientAuth, when set, lets relay clients publish into rooms
	// through the relay port (docs/relay-protocol.md, "Clients";
	// relayauth.Verifier with the signal role's token key);
	// CascadeMaxClients bounds them (default relay.DefaultMaxClients),
	// CascadeClientRate the frames per second from one source address
	// (default relay.DefaultClientRate; negative: no limit): clients
	// behind one NAT address share it.
	CascadeClientAuth relay.ClientAuth `yaml:"-"`
	CascadeMaxClients int              `yaml:"cascade-max-clients"`
	CascadeClientRate float64          `yaml:"cascade-client-rate"`
	// cascadeClientIdle replaces relay.DefaultClientIdle, how long a
	// quiet relay client stays bound (tests).
	cascadeClientIdle time.Duration
	// Group, when set, makes the node one of a balanced group: nodes
	// sharing one public address behind a UDP load balancer, any of which
	// serves a session whose first STUN binding reaches it (group.go,
	// docs/cascade.md). It needs the cascade (CascadeListen): the group's
	// certificate derives from the cascade secret, and a room spans the
	// group's nodes through the cascade. Empty (the default): no group.
	Group string `yaml:"group"`
	// AnnounceInterval is how often the node announces itself; default
	// bus.AnnounceInterval.
	AnnounceInterval time.Duration `yaml:"-"`

	// Bus is the node's bus connection, which it takes its work from.
	// Required; the caller closes it after Run returns.
	Bus *bus.Client `yaml:"-"`
	// Log receives the node's logs; nil discards them.
	Log *slog.Logger `yaml:"-"`
	// Registerer, when set, gets the node's metrics.
	Registerer prometheus.Registerer `yaml:"-"`
}

func (c *Config) validate() error {
	if c.DataPath > DataPathPionBatched {
		return fmt.Errorf("%w: data path %d", ErrConfig, c.DataPath)
	}
	if !c.UDP.IsValid() {
		return fmt.Errorf("%w: no udp address", ErrConfig)
	}
	if c.Bus == nil {
		return fmt.Errorf("%w: no bus client", ErrConfig)
	}
	if c.NodeID != "" && !bus.ValidName(c.NodeID) {
		return fmt.Errorf("%w: node id %q: %w", ErrConfig, c.NodeID, bus.ErrBadSubjectToken)
	}
	if c.Region != "" && len(c.Region) > 64 {
		return fmt.Errorf("%w: region too long", ErrConfig)
	}
	config.Default(&c.MaxPeers, 2000)
	config.Default(&c.PLIInterval, 500*time.Millisecond)
	config.Default(&c.DrainPeriod, 10*time.Second)
	if c.DrainPeriod > bus.MaxDrainPeriod {
		return fmt.Errorf("%w: drain period over %v", ErrConfig, bus.MaxDrainPeriod)
	}
	config.Default(&c.AnnounceInterval, bus.AnnounceInterval)
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.CascadeListen.IsValid() && len(c.CascadeSecret) < 32 {
		return fmt.Errorf("%w: the cascade needs a secret of at least 32 bytes", ErrConfig)
	}
	if c.Group != "" && (!bus.ValidName(c.Group) || !c.CascadeListen.IsValid()) {
		return fmt.Errorf("%w: group %q: a name of 1-64 characters A-Z a-z 0-9 _ - and the cascade (cascade-listen)", ErrConfig, c.Group)
	}
	return nil
}

// DataPath is how an SFU node moves media between its UDP socket and the
// peer connections.
type DataPath uint8

const (
	// DataPathOwn, the default, is the node's own data path: the UDP
	// socket is read with recvmmsg and written with sendmmsg
	// (package batchconn); publishers' SRTP and SRTCP are opened and acted on
	// from the socket's reader (recvpath.go, rtcpin.go); forwarded RTP
	// and the node's RTCP are sealed with SRTP contexts of the node's own
	// and sent in one sendmmsg per fan-out (ownpath.go, rtcpout.go). The
	// node answers as DTLS server to derive the keys (package srtpseal). pion
	// keeps ICE, DTLS and SCTP; a session it cannot serve (ICE-TCP, keys
	// not derivable) stays on pion's path, counted. Measured 10-31 % less
	// CPU per forwarded packet than pion's path (docs/benchmarks.md).
	DataPathOwn DataPath = iota
	// DataPathPion leaves every packet to pion: its UDP mux reads the
	// socket one datagram per system call and its interceptor chain and
	// SRTP sessions encrypt, decrypt and write each packet.
	DataPathPion
	// DataPathPionBatched is DataPathPion over the node's batched socket
	// (recvmmsg reads, a fan-out corked into one sendmmsg) under pion's
	// mux. It saved 0-18 % per packet over DataPathPion on this project's
	// 2-vCPU loopback benchmark, within the noise; it stays for
	// comparisons (bench/sfu-vs-janus.sh "batched").
	DataPathPionBatched
)

var dataPathNames = [...]string{DataPathOwn: "own", DataPathPion: "pion", DataPathPionBatched: "pion-batched"}

// String returns the data path's flag value: "own", "pion" or
// "pion-batched".
func (d DataPath) String() string {
	if int(d) < len(dataPathNames) {
		return dataPathNames[d]
	}
	return fmt.Sprintf("DataPath(%d)", uint8(d))
}

// Set parses s (a flag.Value): "own", "pion" or "pion-batched".
func (d *DataPath) Set(s string) error {
	for i, n := range dataPathNames {
		if s == n {
			*d = DataPath(i)
			return nil
		}
	}
	return fmt.Errorf("%w: data path %q (own, pion or pion-batched)", ErrConfig, s)
}

// UnmarshalText makes DataPath a YAML and environment value.
func (d *DataPath) UnmarshalText(b []byte) error { return d.Set(string(b)) }

// MarshalText is the inverse of UnmarshalText.
func (d DataPath) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// own reports whether the node runs its own data path.
func (d DataPath) own() bool { return d == DataPathOwn }

// batched reports whether the node's batched socket is under pion's mux.
func (d DataPath) batched() bool { return d == DataPathOwn || d == DataPathPionBatched }
