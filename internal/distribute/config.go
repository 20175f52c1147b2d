package distribute

import (
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/addrpolicy"
	"github.com/traverse-rtc/traverse/internal/config"
)

// Defaults of Config's zero values.
const (
	// DefaultListen is where streams arrive when Config.Listen is empty:
	// the usual RTP port.
	DefaultListen = "0.0.0.0:5004"
	// DefaultMaxStreams bounds the table: each stream costs a map entry
	// per snapshot and its counters.
	DefaultMaxStreams = 1024
	// DefaultMaxReceivers bounds one stream's fan-out: each receiver is
	// one more sendmmsg message per packet, so a stream of 1,000 packets/s
	// with 64 receivers costs 64,000 datagrams/s.
	DefaultMaxReceivers = 64
	// DefaultRTCPTimeout removes a receiver that sent no RTCP for this
	// long (RFC 3550 section 6.3.5 times a member out after 5 report
	// intervals, at least 5 s each; 30 s is six).
	DefaultRTCPTimeout = 30 * time.Second
	// DefaultUnreachableTimeout removes a receiver whose address answered
	// with ICMP port unreachable and was not heard from since for this
	// long (a viewer restarting its player keeps its place).
	DefaultUnreachableTimeout = 5 * time.Second
	// DefaultReapInterval is how often the timeouts are checked.
	DefaultReapInterval = time.Second
)

// Config configures a Server. The zero value serves DefaultListen.
type Config struct {
	// Listen are the addresses streams arrive at (DefaultListen when
	// empty); a stream's destination is one of them. Each is one socket.
	Listen []netip.AddrPort `yaml:"listen"`
	// MaxStreams is the most streams in the table (0: DefaultMaxStreams).
	MaxStreams int `yaml:"max_streams"`
	// MaxReceivers is the most receivers of one stream (0:
	// DefaultMaxReceivers).
	MaxReceivers int `yaml:"max_receivers"`
	// RTCPTimeout removes a receiver silent this long (0:
	// DefaultRTCPTimeout; negative: never, for receivers that send no
	// RTCP).
	RTCPTimeout time.Duration `yaml:"rtcp_timeout"`
	// UnreachableTimeout removes a receiver this long after an ICMP port
	// unreachable with no RTCP since (0: DefaultUnreachableTimeout;
	// negative: never).
	UnreachableTimeout time.Duration `yaml:"unreachable_timeout"`
	// ReapInterval is how often timeouts are checked (0:
	// DefaultReapInterval).
	ReapInterval time.Duration `yaml:"-"`
	// Batch is the most datagrams per recvmmsg (0: 64).
	Batch int `yaml:"batch"`
	// ReadBuffer and WriteBuffer are the sockets' SO_RCVBUF and SO_SNDBUF
	// (0: 4 MiB each; a 1 -> 64 fan-out writes 64 datagrams per one read).
	ReadBuffer  int `yaml:"read_buffer"`
	WriteBuffer int `yaml:"write_buffer"`
	// Policy refuses receiver addresses (the shared deny list: private,
	// loopback, the server's own ports); its Loopback and Allow open it
	// for labs.
	Policy addrpolicy.Filter `yaml:"-"`

	// Kernel, when set, is a kernel data path the table is mirrored into
	// (internal/kfast/distribution); the Server owns it and closes it. Nil: user space only.
	Kernel Kernel `yaml:"-"`

	Log        *slog.Logger          `yaml:"-"`
	Registerer prometheus.Registerer `yaml:"-"`
}

func (c *Config) validate() error {
	if len(c.Listen) == 0 {
		c.Listen = []netip.AddrPort{netip.MustParseAddrPort(DefaultListen)}
	}
	seen := map[netip.AddrPort]bool{}
	for i, a := range c.Listen {
		if !a.IsValid() || a.Port() == 0 && len(c.Listen) > 1 {
			return fmt.Errorf("distribute: listen %v: %w", a, ErrBadStream)
		}
		a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
		if seen[a] {
			return fmt.Errorf("distribute: listen %v twice", a)
		}
		seen[a] = true
		c.Listen[i] = a
	}
	if c.MaxStreams == 0 {
		c.MaxStreams = DefaultMaxStreams
	}
	if c.MaxReceivers == 0 {
		c.MaxReceivers = DefaultMaxReceivers
	}
	if c.MaxStreams < 0 || c.MaxReceivers < 0 {
		return fmt.Errorf("distribute: negative limit (max streams %d, max receivers %d)", c.MaxStreams, c.MaxReceivers)
	}
	if c.RTCPTimeout == 0 {
		c.RTCPTimeout = DefaultRTCPTimeout
	}
	if c.UnreachableTimeout == 0 {
		c.UnreachableTimeout = DefaultUnreachableTimeout
	}
	config.Default(&c.ReapInterval, DefaultReapInterval)
	config.Default(&c.Batch, 64)
	if c.ReadBuffer == 0 {
		c.ReadBuffer = 4 << 20
	}
	if c.WriteBuffer == 0 {
		c.WriteBuffer = 4 << 20
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	return nil
}
