package turn

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/config"
)

// DefaultMaxStreamConns is Config.MaxStreamConns's default.
const DefaultMaxStreamConns = 10000

// Config configures a Server. The zero value of every field but Listen and
// Realm is a documented default.
type Config struct {
	// Listen is the UDP and TCP address clients reach (RFC 8656 section 5).
	// Port 0 picks a free port (the same for UDP and TCP).
	Listen netip.AddrPort
	// NoTCP disables the TCP listener on Listen.
	NoTCP bool
	// TLSListen, when valid, adds a TLS-over-TCP listener. TLS supplies its
	// certificates; when nil, a self-signed certificate is generated at
	// start (fine for tests and for clients that do not verify).
	TLSListen netip.AddrPort
	TLS       *tls.Config
	// NoDTLS disables DTLS over UDP on TLSListen's port (on by default
	// when TLSListen is set, as coturn does).
	NoDTLS bool

	// Realm is the long-term credential realm (RFC 8489 section 14.9).
	Realm string
	// Users maps user names to passwords for long-term credentials.
	Users map[string]string
	// UsersFile, when set, is a file of NAME:PASSWORD lines (ParseUsers)
	// read by New and again by ReloadUsers; its entries win over Users.
	UsersFile string
	// ReloadUsers, when set, makes Run reload UsersFile on every value it
	// receives (the command passes SIGHUP). A file that fails to load
	// leaves the users as they were and is logged.
	ReloadUsers <-chan os.Signal
	// AuthSecret, when set, also accepts time-limited credentials: user
	// name "EXPIRY[:user]" (EXPIRY in Unix seconds, digits only), password
	// base64(HMAC-SHA1(AuthSecret, username)). See RESTCredentials.
	AuthSecret string
	// RESTMaxLifetime refuses REST credentials whose EXPIRY lies further
	// ahead than this (default 24 hours; negative: no cap): a leaked
	// credential minted for "forever" is then worth a day at most.
	RESTMaxLifetime time.Duration
	// NonceLifetime is how long a nonce is accepted before 438 Stale Nonce
	// (default 10 minutes). A nonce is good for the client's 5-tuple only:
	// a request replayed from another address or port gets 438.
	NonceLifetime time.Duration

	// RelayIP is the address relay sockets bind and allocations advertise
	// (default: Listen's address, which then must be specified).
	RelayIP netip.Addr
	// RelayPortLow and RelayPortHigh bound the relay ports (default
	// 49152-65535). Each allocation holds one port while they last; then
	// new allocations share relay sockets, told apart by peer IP (two
	// sharers cannot permit the same peer: 403), unless NoSharing, which
	// answers 508 Insufficient Capacity instead.
	RelayPortLow, RelayPortHigh uint16
	NoSharing                   bool
	// NoRawSend sends ChannelData from UDP clients to IPv4 peers with one
	// sendto per packet from the relay socket, instead of in one sendmmsg
	// per batch through a raw socket (udpio.RawSender) with the relayed
	// address as the source, which needs CAP_NET_RAW (without it the
	// server sends with sendto anyway).
	NoRawSend bool

	// AllowLoopbackPeers lets clients relay to loopback addresses: for
	// local tests only; New logs a warning.
	AllowLoopbackPeers bool
	// AllowPeers are peer prefixes allowed even when the default filter
	// refuses them; DenyPeers are refused always (checked first).
	AllowPeers, DenyPeers []netip.Prefix
	// OwnEndpoints are other listeners of this process (a bus, an admin
	// port, an SFU): refused as peers even when AllowLoopbackPeers is set,
	// like the server's own listeners. An unspecified address stands for
	// every address of the host at that port.
	OwnEndpoints []netip.AddrPort

	// DefaultLifetime is the allocation lifetime when the client asks for
	// none (default 10 minutes); MaxLifetime caps what it may ask (default
	// 1 hour). RFC 8656 section 7.2.
	DefaultLifetime, MaxLifetime time.Duration
	// MaxAllocations caps allocations in total (default 10,000) and
	// MaxAllocationsPerUser per user name (default 100; a REST user name
	// is one credential); beyond them, 486 Allocation Quota Reached.
	// Negative means unlimited. Each allocation holds a socket and about
	// 2 KiB.
	MaxAllocations, MaxAllocationsPerUser int
	// AllocationRate caps new allocations per second per source (an IPv4
	// address or an IPv6 /64), with bursts of five seconds' worth
	// (default 20; negative: unlimited); beyond it, 486.
	AllocationRate int
	// BandwidthPerAllocation caps each allocation's relayed bytes per
	// second, each direction on its own (token bucket of one second's
	// worth; excess packets are dropped and counted). 0 means unlimited.
	BandwidthPerAllocation int64
	// AuthFailuresPerMinute caps failed authentications per source and
	// user name; requests for that name from that source are dropped
	// unanswered for the rest of the minute (default 30; negative
	// disables the limit). AuthFailuresPerSource caps them per source over
	// all names, beyond which every request of the source is dropped
	// (default ten times AuthFailuresPerMinute; negative disables). One
	// client with a wrong password behind a NAT thus does not lock out
	// the others behind it.
	AuthFailuresPerMinute, AuthFailuresPerSource int
	// UnauthAnswerRate caps the answers per second per source to requests
	// that are not authenticated (401, 438, other errors, Binding), with
	// bursts of five seconds' worth (default 50; negative: unlimited);
	// beyond it requests are dropped unanswered. Such answers are about
	// 100 bytes (no SOFTWARE: 2.7 times a typical first Allocate), so a
	// spoofed source is sent about 5 KB/s at most (25 KB in a burst).
	UnauthAnswerRate int

	// MaxStreamConns caps open TCP, TLS and DTLS client connections
	// together (default 10,000), MaxStreamConnsPerSource those of one
	// source (default 100; negative: unlimited); beyond them new
	// connections are closed at once.
	MaxStreamConns, MaxStreamConnsPerSource int
	// StreamAuthTimeout closes a client connection that has not sent an
	// authenticated request this long after it opened (default 10 s;
	// negative: never). StreamIdleTimeout closes one that holds no
	// allocation and has sent nothing for this long (default 2 minutes;
	// negative: never); a connection with an allocation lives as long as
	// its allocation.
	StreamAuthTimeout, StreamIdleTimeout time.Duration

	// Shards is the number of SO_REUSEPORT UDP sockets on Listen, each with
	// its own reader (default 1).
	Shards int
	// Coalesce, when positive, lets each event loop wait this long before
	// its next epoll_wait whenever wake-ups arrive faster than that, so
	// that one wake-up and one batch of system calls serve every packet
	// queued meanwhile. It adds at most this much delay to relayed
	// packets under load and none when traffic is light. 0 disables it.
	Coalesce time.Duration
	// Offloader, when set, relays the channels of UDP clients in the kernel
	// (internal/kfast/turnchannel) from their ChannelBind on, IPv4 only and
	// only with a specific Listen address; nil (the default) keeps every
	// packet in user space. Its kernel counters are read into the metrics
	// every PollEvery. With BandwidthPerAllocation set, an allocation that
	// relays more than its rate in the kernel over one such period goes
	// back to user space for 10 s, so the quota can be exceeded by up to
	// one period's traffic.
	Offloader Offloader
	// PollEvery is how often the server sweeps expired allocations,
	// permissions and channels and reads the Offloader's kernel counters
	// (default 1 s; the offload lab tests read them sooner).
	PollEvery time.Duration
	// Software, when set, is sent in the SOFTWARE attribute.
	Software string

	// Registerer receives the server's metrics (nil: not registered).
	Registerer prometheus.Registerer
	// Log receives the server's logs (default: discarded). Lines about
	// outside input are bounded by internal/logging's Handler: Log's own
	// when it has one, else one with the default limits (logging.Bounded).
	Log *slog.Logger
}

func (c *Config) validate() error {
	if !c.Listen.IsValid() {
		return fmt.Errorf("%w: listen address is required", ErrConfig)
	}
	if c.Realm == "" {
		return fmt.Errorf("%w: realm is required", ErrConfig)
	}
	if !c.RelayIP.IsValid() {
		c.RelayIP = c.Listen.Addr()
	}
	c.RelayIP = c.RelayIP.Unmap()
	if c.RelayIP.IsUnspecified() {
		return fmt.Errorf("%w: relay IP must be a specific address (listen is %s; set the relay IP)", ErrConfig, c.Listen.Addr())
	}
	if c.RelayPortLow == 0 && c.RelayPortHigh == 0 {
		c.RelayPortLow, c.RelayPortHigh = 49152, 65535
	}
	if c.RelayPortLow == 0 || c.RelayPortHigh < c.RelayPortLow {
		return fmt.Errorf("%w: relay port range %d-%d", ErrConfig, c.RelayPortLow, c.RelayPortHigh)
	}
	config.Default(&c.NonceLifetime, 10*time.Minute)
	config.Default(&c.PollEvery, time.Second)
	config.Default(&c.DefaultLifetime, 10*time.Minute)
	config.Default(&c.MaxLifetime, time.Hour)
	if c.MaxLifetime < c.DefaultLifetime {
		c.MaxLifetime = c.DefaultLifetime
	}
	if c.AuthFailuresPerMinute == 0 {
		c.AuthFailuresPerMinute = 30
	}
	if c.AuthFailuresPerSource == 0 {
		c.AuthFailuresPerSource = 10 * c.AuthFailuresPerMinute // negative stays negative
	}
	if c.RESTMaxLifetime == 0 {
		c.RESTMaxLifetime = 24 * time.Hour
	}
	defaultInt(&c.MaxAllocations, 10000)
	defaultInt(&c.MaxAllocationsPerUser, 100)
	defaultInt(&c.AllocationRate, 20)
	defaultInt(&c.UnauthAnswerRate, 50)
	defaultInt(&c.MaxStreamConnsPerSource, 100)
	config.Default(&c.MaxStreamConns, DefaultMaxStreamConns)
	if c.StreamAuthTimeout == 0 {
		c.StreamAuthTimeout = 10 * time.Second
	}
	if c.StreamIdleTimeout == 0 {
		c.StreamIdleTimeout = 2 * time.Minute
	}
	if c.Shards < 0 {
		return fmt.Errorf("%w: shards %d: want 1 or more (0: 1)", ErrConfig, c.Shards)
	}
	config.Default(&c.Shards, 1)
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// defaultInt sets a zero *v to def; negative values (unlimited) stay.
func defaultInt(v *int, def int) {
	if *v == 0 {
		*v = def
	}
}
