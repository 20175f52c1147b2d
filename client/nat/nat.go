// Package nat discovers how the NAT (if any) between this host and the
// internet behaves, with the tests of RFC 5780 ("NAT Behavior Discovery
// Using STUN") sections 4.3 to 4.6 run against a server that implements it
// (traverse stun --other-address, coturn, ...):
//
//   - mapping behaviour (4.3): does the public address:port of one local
//     socket stay the same whatever the destination (endpoint-independent),
//     change per destination IP (address-dependent) or per destination
//     IP:port (address-and-port-dependent, "symmetric")?
//   - filtering behaviour (4.4): which outside sources may send to a
//     mapping: anyone, only IPs it sent to, or only the exact IP:ports.
//   - hairpinning (4.5): can two hosts behind the NAT reach each other
//     through their public addresses?
//   - binding lifetime (4.6, optional, slow): how long an idle UDP mapping
//     survives.
//
// Requests are retransmitted per RFC 8489 section 6.2.1 (RTO doubling),
// bounded by Config.Attempts; a test that expects a response that a NAT
// filters away costs the whole retransmission budget.
//
// The client library's P2P-first dialing uses it to decide whether a direct
// path can work before falling back to a relay.
package nat

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Behavior is a NAT mapping or filtering behaviour (RFC 4787).
type Behavior int

const (
	// Unknown means the test could not tell (a response was missing).
	Unknown Behavior = iota
	// EndpointIndependent mapping keeps one public address per local
	// socket; endpoint-independent filtering lets anyone reach it. No NAT
	// at all behaves like this.
	EndpointIndependent
	// AddressDependent depends on the remote IP address only.
	AddressDependent
	// AddressAndPortDependent depends on the remote IP and port (a
	// "symmetric" NAT when it is the mapping behaviour).
	AddressAndPortDependent
)

var behaviorNames = [...]string{"unknown", "endpoint-independent", "address-dependent", "address-and-port-dependent"}

func (b Behavior) String() string {
	if b < 0 || int(b) >= len(behaviorNames) {
		return fmt.Sprintf("Behavior(%d)", int(b))
	}
	return behaviorNames[b]
}

// MarshalText implements encoding.TextMarshaler (for JSON).
func (b Behavior) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (b *Behavior) UnmarshalText(t []byte) error {
	for i, n := range behaviorNames {
		if n == string(t) {
			*b = Behavior(i)
			return nil
		}
	}
	return fmt.Errorf("nat: unknown behavior %q", t)
}

// Config says which server to ask and how patiently. Zero values select the
// defaults.
type Config struct {
	// Server is the RFC 5780 STUN server, host:port.
	Server string
	// Local is the local address to bind: an IP, or IP:port for the
	// first socket (later sockets take a free port on the same IP).
	// Default: the unspecified address of the server's family.
	Local string
	// RTO is the first retransmission timeout (RFC 8489 section 6.2.1);
	// it doubles after each retransmission. Default 200ms.
	RTO time.Duration
	// Attempts is the number of requests one transaction sends (Rc);
	// default 4, so a transaction that gets no answer gives up after
	// RTO * (2^Attempts - 1): 3 s with the defaults.
	Attempts int
	// Lifetime also estimates the UDP binding lifetime (section 4.6). It
	// takes up to about twice LifetimeMax.
	Lifetime bool
	// LifetimeMax is the longest lifetime tried; default 2 minutes.
	LifetimeMax time.Duration
	// Software is the SOFTWARE attribute of requests; default none.
	Software string
}

func (c *Config) validate() error {
	if c.Server == "" {
		return fmt.Errorf("%w: no server", ErrConfig)
	}
	if c.RTO <= 0 {
		c.RTO = 200 * time.Millisecond
	}
	if c.Attempts <= 0 {
		c.Attempts = 4
	}
	if c.Attempts > 9 {
		return fmt.Errorf("%w: attempts %d > 9", ErrConfig, c.Attempts)
	}
	if c.LifetimeMax <= 0 {
		c.LifetimeMax = 2 * time.Minute
	}
	return nil
}

// Report is what Discover found.
type Report struct {
	// Server is the primary address asked, OtherAddress the server's
	// alternate one (RFC 5780 OTHER-ADDRESS).
	Server       netip.AddrPort `json:"server"`
	OtherAddress netip.AddrPort `json:"other_address"`
	// Local is the first test socket's address; PublicAddr how the
	// server saw it (XOR-MAPPED-ADDRESS).
	Local      netip.AddrPort `json:"local"`
	PublicAddr netip.AddrPort `json:"public"`
	// NAT is true when PublicAddr is not an address of this host: some
	// NAT translates. Without one, mapping and filtering report what a
	// stateful firewall on the way does (endpoint-independent when none).
	NAT bool `json:"nat"`
	// UDPBlocked is true when the server answered over TCP but never over
	// UDP (Discover then returns ErrUDPBlocked and PublicAddr is the TCP
	// mapping).
	UDPBlocked bool     `json:"udp_blocked,omitempty"`
	Mapping    Behavior `json:"mapping"`
	Filtering  Behavior `json:"filtering"`
	// Hairpinning is true when a packet sent from one local socket to
	// another's public address arrived.
	Hairpinning bool `json:"hairpinning"`
	// BindingLifetime is the longest idle time after which a mapping
	// still worked, when Config.Lifetime asked for it (0 otherwise or if
	// it could not be measured); BindingLifetimeMax the shortest idle
	// time after which it failed (0 if none failed up to LifetimeMax).
	BindingLifetime    Duration `json:"binding_lifetime,omitempty"`
	BindingLifetimeMax Duration `json:"binding_lifetime_max,omitempty"`
	// Notes explain tests that could not conclude.
	Notes []string `json:"notes,omitempty"`
}

// Duration is a time.Duration that reads as "1m30s" in JSON.
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}

// String describes the report for people, one finding per line.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "server:           %s (other address %s)\n", r.Server, r.OtherAddress)
	fmt.Fprintf(&b, "local address:    %s\n", r.Local)
	fmt.Fprintf(&b, "public address:   %s\n", r.PublicAddr)
	if r.NAT {
		b.WriteString("NAT:              yes\n")
	} else {
		b.WriteString("NAT:              no (the public address is this host's)\n")
	}
	fmt.Fprintf(&b, "mapping:          %s\n", r.Mapping)
	fmt.Fprintf(&b, "filtering:        %s\n", r.Filtering)
	fmt.Fprintf(&b, "hairpinning:      %s\n", yesNo(r.Hairpinning))
	if r.BindingLifetime > 0 || r.BindingLifetimeMax > 0 {
		if r.BindingLifetimeMax > 0 {
			fmt.Fprintf(&b, "binding lifetime: between %s and %s\n", time.Duration(r.BindingLifetime), time.Duration(r.BindingLifetimeMax))
		} else {
			fmt.Fprintf(&b, "binding lifetime: at least %s\n", time.Duration(r.BindingLifetime))
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	return b.String()
}

// JSON returns the report as indented JSON.
func (r Report) JSON() []byte {
	b, _ := json.MarshalIndent(r, "", "  ")
	return append(b, '\n')
}

func yesNo(v bool) string {
	if v {
		return "yes"
	}
	return "no"
}

// Discover runs the RFC 5780 tests against cfg.Server and reports what it
// found. It returns ErrUnreachable when the server never answers,
// ErrUDPBlocked (which wraps ErrUnreachable) when it answers only over TCP, and
// ErrNoRFC5780 when it answers without OTHER-ADDRESS. It honours ctx.
func Discover(ctx context.Context, cfg Config) (Report, error) {
	if err := cfg.validate(); err != nil {
		return Report{}, err
	}
	server, err := resolve(ctx, cfg.Server)
	if err != nil {
		return Report{}, err
	}
	d := &discovery{cfg: cfg, server: server}
	return d.run(ctx)
}
