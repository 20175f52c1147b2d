package stun

import (
	"fmt"
	"net/netip"
	"runtime"
)

// Config configures a Server. The zero value of each field selects the
// documented default.
type Config struct {
	// Listen is the UDP and TCP address (host:port) of Binding requests.
	// Default "0.0.0.0:3478". With OtherAddress set it must name an IP.
	// Port 0 picks a free port (tests).
	Listen string `yaml:"listen"`
	// OtherAddress is the second IP address that turns on the RFC 5780
	// server (four UDP sockets). Empty disables RFC 5780.
	OtherAddress string `yaml:"other-address"`
	// OtherPort is the alternate port of the RFC 5780 sockets. Default:
	// the listen port + 1.
	OtherPort int `yaml:"other-port"`
	// NoTCP disables the TCP listener on Listen's address.
	NoTCP bool `yaml:"no-tcp"`
	// TLSListen is the address of STUN over TLS (RFC 8489 section 6.2.2;
	// port 5349 by convention). Empty disables TLS.
	TLSListen string `yaml:"tls-listen"`
	// TLSCert and TLSKey are PEM files; when both are empty a self-signed
	// certificate is generated at start (for local use only).
	TLSCert string `yaml:"tls-cert"`
	TLSKey  string `yaml:"tls-key"`
	// Software is the SOFTWARE attribute's value; default "traverse".
	// "-" omits the attribute.
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
	MaxTCPConns int `yaml:"max-tcp-conns"`
}

// resolved is a validated Config.
type resolved struct {
	Config
	listen netip.AddrPort
	other  netip.Addr // invalid when RFC 5780 is off
}

func (c Config) validate() (resolved, error) {
	r := resolved{Config: c}
	if r.Listen == "" {
		r.Listen = "0.0.0.0:3478"
	}
	ap, err := netip.ParseAddrPort(r.Listen)
	if err != nil {
		return r, fmt.Errorf("%w: listen %q: %v", ErrConfig, r.Listen, err)
	}
	r.listen = ap
	if r.OtherAddress != "" {
		o, err := netip.ParseAddr(r.OtherAddress)
		if err != nil {
			return r, fmt.Errorf("%w: other-address %q: %v", ErrConfig, r.OtherAddress, err)
		}
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
	if r.TLSListen != "" {
		if _, err := netip.ParseAddrPort(r.TLSListen); err != nil {
			return r, fmt.Errorf("%w: tls-listen %q: %v", ErrConfig, r.TLSListen, err)
		}
	}
	if r.Software == "" {
		r.Software = "traverse"
	}
	if r.Software == "-" {
		r.Software = ""
	}
	if len(r.Software) > 763 {
		return r, fmt.Errorf("%w: software longer than 763 bytes", ErrConfig)
	}
	if r.Readers <= 0 {
		r.Readers = max(1, runtime.NumCPU()/2)
	}
	if r.Readers > 64 {
		r.Readers = 64
	}
	if r.Batch <= 0 {
		r.Batch = 64
	}
	if r.MaxTCPConns <= 0 {
		r.MaxTCPConns = 1024
	}
	return r, nil
}
