package sfu

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// Config is an SFU node's configuration.
type Config struct {
	// UDP is the one media UDP address ("host:port") every peer
	// connection shares. Required.
	UDP string `yaml:"udp"`
	// TCP is the one ICE-TCP listener address; empty disables ICE-TCP.
	TCP string `yaml:"tcp"`
	// PublicIP replaces the host address in the node's ICE candidates
	// (1:1 NAT, a load balancer); zero keeps the bound address.
	PublicIP netip.Addr `yaml:"-"`
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
	// BatchIO puts the batched socket (recvmmsg reads, a fan-out's writes
	// corked into one sendmmsg, batchconn.go) under pion's UDP mux instead
	// of pion's one packet per system call. Default false: on this
	// project's 2-vCPU loopback benchmark it saved 0-18 % per packet,
	// within the run-to-run noise (the kernel's per-datagram work
	// dominates, docs/benchmarks.md).
	BatchIO bool `yaml:"batch-io"`
	// FastPath forwards RTP to subscribers with the node's own SRTP
	// context and batched socket writes instead of pion's per-subscriber
	// write stack (fastpath.go); the node then answers as DTLS server.
	// Subscribers whose keys cannot be derived stay on pion's path.
	// Default false here; the traverse command's --fast-path defaults to
	// true (10-28 % less CPU per forwarded packet in a 1 -> 50 fan-out,
	// -3 to 31 % in rooms of 4, docs/benchmarks.md).
	FastPath bool `yaml:"fast-path"`
	// FastReceive takes publishers' RTP off pion's receive path (own
	// receive path, recvpath.go): the node's batched socket reads under
	// pion's mux, and RTP of registered streams is decrypted and forwarded
	// on the socket's reader goroutine, without pion's four goroutine
	// hand-offs per packet. It needs FastPath (ignored without it) and
	// applies only to sessions with a feedback recorder. Default false.
	FastReceive bool `yaml:"fast-receive"`
	// FastRTCPSend seals the RTCP the node sends to a fast-path client
	// (receiver reports, TWCC feedback and NACKs toward publishers, sender
	// reports, keyframe requests) with the session's own SRTCP context and
	// writes it on the node's batched socket instead of pion's RTCP write
	// chain (rtcpout.go). Sessions on pion's path (fast path not active,
	// ICE-TCP) keep pion's. It needs FastPath (ignored without it).
	// Default false here; the traverse command's --fast-rtcp-send
	// defaults to true.
	FastRTCPSend bool `yaml:"fast-rtcp-send"`
	// FastRTCP takes the SRTCP of sessions on the own receive path off
	// pion's receive chain too (rtcpin.go): it is authenticated and
	// decrypted with the client's keys on the socket's reader goroutine,
	// and its keyframe requests, NACKs, REMB, transport-cc feedback,
	// reception reports and sender reports are acted on there, without
	// pion's SRTCP session goroutine, per-SSRC buffers and one reader
	// goroutine per sent track. It needs FastReceive (ignored without
	// it). Default false here; the traverse command's --fast-rtcp
	// defaults to true.
	FastRTCP bool `yaml:"fast-rtcp"`
	// newRecorder, when set, gives every fast-path peer connection the
	// recorder the own receive path feeds (tests).
	newRecorder func() receiveRecorder
	// SchedulerPoll runs the scheduler poll while the node forwards media
	// (schedpoll.go): 25-35 % less CPU per forwarded packet measured on a
	// 2-vCPU VM, nothing when idle. Default false here; the traverse
	// command's --scheduler-poll defaults to true.
	SchedulerPoll bool `yaml:"scheduler-poll"`
	// AnnounceInterval is how often the node announces itself; default
	// bus.AnnounceInterval.
	AnnounceInterval time.Duration `yaml:"-"`
}

func (c *Config) validate() error {
	if c.UDP == "" {
		return fmt.Errorf("%w: no udp address", ErrConfig)
	}
	if _, err := netip.ParseAddrPort(c.UDP); err != nil {
		return fmt.Errorf("%w: udp %q: %w", ErrConfig, c.UDP, err)
	}
	if c.TCP != "" {
		if _, err := netip.ParseAddrPort(c.TCP); err != nil {
			return fmt.Errorf("%w: tcp %q: %w", ErrConfig, c.TCP, err)
		}
	}
	if c.NodeID != "" && !bus.ValidName(c.NodeID) {
		return fmt.Errorf("%w: node id %q: %w", ErrConfig, c.NodeID, bus.ErrBadSubjectToken)
	}
	if c.Region != "" && len(c.Region) > 64 {
		return fmt.Errorf("%w: region too long", ErrConfig)
	}
	if c.MaxPeers <= 0 {
		c.MaxPeers = 2000
	}
	if c.PLIInterval <= 0 {
		c.PLIInterval = 500 * time.Millisecond
	}
	if c.AnnounceInterval <= 0 {
		c.AnnounceInterval = bus.AnnounceInterval
	}
	return nil
}
