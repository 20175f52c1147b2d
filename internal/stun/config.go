package stun

import (
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/traverse-rtc/traverse/internal/config"
)

// DefaultMaxTCPConns is Config.MaxTCPConns's default.
const DefaultMaxTCPConns = 1024

// Config configures a Server. The zero value of each field selects the
// documented default.
type Config struct {
	// Listen is the UDP and TCP address of Binding requests. Default
	// 0.0.0.0:3478 (the zero value). With OtherAddress set it must name an
	// IP. Port 0 picks a free port (tests).
	Listen netip.AddrPort `yaml:"listen"`
	// OtherAddress is the second IP address that turns on the RFC 5780
	// server (four UDP sockets). The zero value disables RFC 5780.
	OtherAddress netip.Addr `yaml:"other-address"`
	// OtherPort is the alternate port of the RFC 5780 sockets. Default:
	// the listen port + 1.
	OtherPort int `yaml:"other-port"`
	// NoTCP disables the TCP listener on Listen's address.
	NoTCP bool `yaml:"no-tcp"`
	// TLSListen is the address of STUN over TLS (RFC 8489 section 6.2.2;
	// port 5349 by convention). The zero value disables TLS.
	TLSListen netip.AddrPort `yaml:"tls-listen"`
	// TLSCert and TLSKey are PEM files; when both are empty a self-signed
	// certificate is generated at start (for local use only).
	TLSCert string `yaml:"tls-cert"`
	TLSKey  string `yaml:"tls-key"`
	// Software is the SOFTWARE attribute's value; default none (and "-"):
	// every byte of an answer is a byte a spoofed request reflects.
	Software string `yaml:"software"`
	// Readers is the number of SO_REUSEPORT sockets (each with its own
	// reader goroutine) sharing the primary UDP address. Default: one per
	// two CPUs (at least one). More readers answer more requests per
	// second once one core is saturated, but cost more CPU per request
	// (more wake-ups, smaller batches): on a 2-vCPU machine two readers
	// cost about 15 % more CPU per answer than one (docs/benchmarks.md).
	Readers int `yaml:"readers"`
	// Batch is the number of datagrams moved per system call; default
	// 64. Larger batches cost more memory per reader (2 KiB per message,
	// twice).
	Batch int `yaml:"batch"`
	// MaxTCPConns bounds concurrent TCP and TLS connections; default 1024.
	// Each costs a descriptor and about 10 KiB (buffers, goroutine; a TLS
	// one about 40 KiB more).
	MaxTCPConns int `yaml:"max-tcp-conns"`
	// MaxTCPConnsPerAddr bounds the concurrent TCP and TLS connections of
	// one source (an IPv4 address or an IPv6 /64), so that one address
	// cannot take all of MaxTCPConns; default 32. Raise it for many
	// clients behind one NAT that all use STUN over TCP.
	MaxTCPConnsPerAddr int `yaml:"max-tcp-conns-per-addr"`
	// FirstMessageTimeout closes a TCP or TLS connection that has not
	// sent a STUN request answered within this long of its accept (the
	// TLS handshake included); default 10s.
	FirstMessageTimeout time.Duration `yaml:"first-message-timeout"`
	// IdleTimeout closes a TCP or TLS connection that sent no request for
	// this long after its last answer; default 60s.
	IdleTimeout time.Duration `yaml:"idle-timeout"`
	// Rate is how many requests per second one source (an IPv4 address
	// or an IPv6 /64) gets answered, over every transport; the rest are
	// dropped and counted (dropped_total{reason="rate_limited"}). Default
	// 100 (0), which is tens of times what a client gathering
	// candidates sends, and leaves room for a few hundred clients behind
	// one NAT; negative: no limit. The limiter costs 512 KiB.
	Rate int `yaml:"rate"`
	// RateBurst is the bucket size of Rate: how many requests one source
	// may send at once. Default 2 x Rate (0).
	RateBurst int `yaml:"rate-burst"`

	// Offload answers Binding requests without attributes (or with only
	// FINGERPRINT) in the kernel: "ebpf" (a tc program,
	// internal/kfast/stunanswer; needs root, IPv4, no Software) or "off"
	// (the default, ""): everything in user space. Kernel answers skip
	// Rate (see docs/stun.md).
	Offload string `yaml:"offload"`
	// OffloadInterfaces are the interfaces the kernel path is attached to
	// (default: every interface that is up, lo included).
	OffloadInterfaces []string `yaml:"offload-interface"`
	// OffloadNetNS is a network namespace file descriptor for the kernel
	// path's interfaces (tests; 0: the current one).
	OffloadNetNS int `yaml:"-"`

	// Log receives the server's logs (default: discarded).
	Log *slog.Logger `yaml:"-"`
	// Registerer receives the server's metrics (default: a registry of
	// its own, so that two servers never share counters).
	Registerer prometheus.Registerer `yaml:"-"`
}

// resolved is a validated Config.
type resolved struct {
	Config
	listen netip.AddrPort
	other  netip.Addr // invalid when RFC 5780 is off
}

func (c Config) validate() (resolved, error) {
	r := resolved{Config: c}
	if !r.Listen.IsValid() {
		r.Listen = netip.AddrPortFrom(netip.IPv4Unspecified(), 3478)
	}
	ap := r.Listen
	r.listen = ap
	if o := r.OtherAddress; o.IsValid() {
		if ap.Addr().IsUnspecified() {
			return r, fmt.Errorf("%w: with other-address, listen must name an IP address, not %s", ErrConfig, ap.Addr())
		}
		if o == ap.Addr() || o.Is4() != ap.Addr().Is4() || o.IsUnspecified() {
			return r, fmt.Errorf("%w: other-address %s must be a different IP of the same family as %s", ErrConfig, o, ap.Addr())
		}
		r.other = o
	}
	if r.OtherPort < 0 || r.OtherPort > 65535 || (r.OtherPort != 0 && r.OtherPort == int(ap.Port())) {
		return r, fmt.Errorf("%w: other-port %d", ErrConfig, r.OtherPort)
	}
	if (r.TLSCert == "") != (r.TLSKey == "") {
		return r, fmt.Errorf("%w: tls-cert and tls-key go together", ErrConfig)
	}
	if r.Software == "-" {
		r.Software = ""
	}
	if len(r.Software) > 763 {
		return r, fmt.Errorf("%w: software longer than 763 bytes", ErrConfig)
	}
	config.Default(&r.Readers, max(1, runtime.NumCPU()/2))
	if r.Readers > 64 {
		r.Readers = 64
	}
	config.Default(&r.Batch, 64)
	config.Default(&r.MaxTCPConns, DefaultMaxTCPConns)
	config.Default(&r.MaxTCPConnsPerAddr, 32)
	config.Default(&r.FirstMessageTimeout, 10*time.Second)
	config.Default(&r.IdleTimeout, 60*time.Second)
	if r.Rate == 0 {
		r.Rate = 100
	}
	if r.Rate > int(time.Second) {
		return r, fmt.Errorf("%w: rate %d above 1e9 per second", ErrConfig, r.Rate)
	}
	config.Default(&r.RateBurst, 2*max(r.Rate, 1))
	if err := r.validateOffload(); err != nil {
		return r, err
	}
	if r.Log == nil {
		r.Log = slog.New(slog.DiscardHandler)
	}
	if r.Registerer == nil {
		r.Registerer = prometheus.NewRegistry()
	}
	return r, nil
}
