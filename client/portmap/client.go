package portmap

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Config.
const (
	DefaultLifetime     = 2 * time.Hour // RFC 6886 section 3.3's recommended lifetime
	DefaultTimeout      = time.Second
	DefaultMaxHTTPBytes = 64 << 10
	// firstRetransmit is RFC 6886 section 3.1's first interval (it
	// doubles); PCP (RFC 6887 section 8.1.1) starts at 3 s, too slow
	// for a probe that runs before a call.
	firstRetransmit = 250 * time.Millisecond
	// minLifetime bounds Config.Lifetime from below: tests use seconds,
	// routers clamp to their own minimum (miniupnpd: 120 s for PCP).
	minLifetime = 2 * time.Second
)

// Config says which gateway to ask and how. Zero values select defaults.
type Config struct {
	// Gateway is the router to ask. Default: the next hop of the default
	// route (DefaultGateway).
	Gateway netip.Addr
	// Local is this host's address towards the gateway (the PCP client
	// address and the UPnP internal client). Default: the source address
	// the kernel picks for the gateway.
	Local netip.Addr
	// Protocols lists the protocols to use, in order of preference.
	// Default PCP, PMP, UPnP (see the package documentation for why).
	Protocols []Protocol
	// Lifetime is the mapping lifetime asked for; routers may grant less.
	// Mappings renew at half the granted lifetime. Default 2 h, at
	// least 2 s.
	Lifetime time.Duration
	// Timeout bounds each exchange with the gateway (a PCP or NAT-PMP
	// request with its retransmissions, an SSDP search, one HTTP request).
	// A gateway that does not speak a protocol costs this much, once per
	// Probe, in parallel with the others. Default 1 s.
	Timeout time.Duration
	// MaxHTTPBytes bounds a UPnP HTTP response body (and, divided by 4,
	// its header). Default 64 KiB: a router's description is a few KiB.
	MaxHTTPBytes int
	// Description names the UPnP mapping on the router. Default "traverse".
	Description string
	// PMPPort and SSDPPort are the gateway's PCP/NAT-PMP and SSDP ports.
	// Default 5351 and 1900; tests move them.
	PMPPort, SSDPPort uint16
	// ListenUDP opens an unconnected UDP socket on addr. Default
	// net.ListenUDP. Lab tests open it in another network namespace.
	ListenUDP func(addr netip.AddrPort) (*net.UDPConn, error)
	// Dial opens a connection (TCP to the UPnP device; UDP once, to learn
	// Local). Default net.Dialer.DialContext.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

func (c *Config) validate() error {
	if c.Lifetime == 0 {
		c.Lifetime = DefaultLifetime
	}
	if c.Lifetime < minLifetime || c.Lifetime > 365*24*time.Hour {
		return fmt.Errorf("%w: lifetime %v", ErrConfig, c.Lifetime)
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxHTTPBytes <= 0 {
		c.MaxHTTPBytes = DefaultMaxHTTPBytes
	}
	if c.Description == "" {
		c.Description = "traverse"
	}
	if c.PMPPort == 0 {
		c.PMPPort = pmpDefaultPort
	}
	if c.SSDPPort == 0 {
		c.SSDPPort = upnpDefaultPort
	}
	if len(c.Protocols) == 0 {
		c.Protocols = []Protocol{PCP, PMP, UPnP}
	}
	for _, p := range c.Protocols {
		if p < PCP || p > UPnP {
			return fmt.Errorf("%w: protocol %v", ErrConfig, p)
		}
	}
	if c.ListenUDP == nil {
		c.ListenUDP = func(a netip.AddrPort) (*net.UDPConn, error) {
			return net.ListenUDP("udp", net.UDPAddrFromAddrPort(a))
		}
	}
	if c.Dial == nil {
		var d net.Dialer
		c.Dial = d.DialContext
	}
	if c.Gateway.IsValid() && !c.Gateway.Is4() && !c.Gateway.Is4In6() {
		return fmt.Errorf("%w: gateway %v: only IPv4 gateways are supported", ErrConfig, c.Gateway)
	}
	return nil
}

// Stats counts what the client dropped and did. Counters only grow.
type Stats struct {
	// Foreign counts datagrams from an address other than the gateway's
	// protocol port (forgeries, or other hosts' SSDP chatter): dropped.
	Foreign uint64
	// Malformed counts answers from the gateway that did not parse or did
	// not match the request (nonce, opcode, port): dropped.
	Malformed uint64
	// Oversize counts UPnP HTTP answers over Config.MaxHTTPBytes: refused.
	Oversize uint64
	// Renewals and RenewFailures count mapping renewals.
	Renewals, RenewFailures uint64
}

type counters struct {
	foreign, malformed, oversize, renewals, renewFailures atomic.Uint64
}

// Client asks one gateway for port mappings. It is safe for concurrent use.
type Client struct {
	cfg   Config
	stats counters

	mu       sync.Mutex // guards the fields below
	closed   bool
	mappings map[*Mapping]struct{}
}

// New makes a client: it finds the gateway and this host's address towards
// it, without sending anything.
func New(cfg Config) (*Client, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if !cfg.Gateway.IsValid() {
		gw, err := DefaultGateway()
		if err != nil {
			return nil, err
		}
		cfg.Gateway = gw
	}
	cfg.Gateway = cfg.Gateway.Unmap()
	if !cfg.Local.IsValid() {
		ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
		defer cancel()
		// A connected UDP socket sends nothing; it only asks the kernel
		// which source address it would use.
		conn, err := cfg.Dial(ctx, "udp4", netip.AddrPortFrom(cfg.Gateway, cfg.PMPPort).String())
		if err != nil {
			return nil, fmt.Errorf("portmap: local address towards %v: %w", cfg.Gateway, err)
		}
		ap, err := netip.ParseAddrPort(conn.LocalAddr().String())
		_ = conn.Close()
		if err != nil {
			return nil, fmt.Errorf("portmap: local address: %w", err)
		}
		cfg.Local = ap.Addr()
	}
	cfg.Local = cfg.Local.Unmap()
	return &Client{cfg: cfg, mappings: map[*Mapping]struct{}{}}, nil
}

// Gateway is the router the client asks; Local this host's address towards it.
func (c *Client) Gateway() netip.Addr { return c.cfg.Gateway }

// Local is this host's address towards the gateway.
func (c *Client) Local() netip.Addr { return c.cfg.Local }

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	return Stats{
		Foreign: c.stats.foreign.Load(), Malformed: c.stats.malformed.Load(), Oversize: c.stats.oversize.Load(),
		Renewals: c.stats.renewals.Load(), RenewFailures: c.stats.renewFailures.Load(),
	}
}

// Offer is what the gateway answered to a Probe.
type Offer struct {
	Gateway, Local netip.Addr
	// PCP: the gateway answered a PCP ANNOUNCE (any result code but
	// UNSUPP_VERSION counts: the server speaks PCP).
	PCP bool
	// PMP: the gateway answered a NAT-PMP external address request;
	// PMPExternal is that address.
	PMP         bool
	PMPExternal netip.Addr
	// UPnP: an IGD answered the SSDP search with a usable description.
	UPnP         bool
	UPnPLocation string
	UPnPService  IGDService
	// Errors says why each protocol that did not answer failed.
	Errors map[Protocol]error
}

// Has says whether the gateway offered p.
func (o Offer) Has(p Protocol) bool {
	switch p {
	case PCP:
		return o.PCP
	case PMP:
		return o.PMP
	case UPnP:
		return o.UPnP
	}
	return false
}

func (o Offer) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "gateway:   %v (from %v)\n", o.Gateway, o.Local)
	line := func(p Protocol, ok bool, detail string) {
		if ok {
			fmt.Fprintf(&b, "%-10s offered%s\n", p.String()+":", detail)
			return
		}
		if err, asked := o.Errors[p]; asked {
			fmt.Fprintf(&b, "%-10s no (%v)\n", p.String()+":", err)
		} else {
			fmt.Fprintf(&b, "%-10s not asked\n", p.String()+":")
		}
	}
	line(PCP, o.PCP, "")
	line(PMP, o.PMP, fmt.Sprintf(", external address %v", o.PMPExternal))
	line(UPnP, o.UPnP, fmt.Sprintf(", %s at %s (%s)", o.UPnPService.Type, o.UPnPLocation, o.UPnPService.FriendlyName))
	return b.String()
}

// Probe asks the gateway, in parallel, which protocols it speaks: a PCP
// ANNOUNCE, a NAT-PMP external address request and an SSDP search followed
// by the device description. It creates nothing on the router and takes at
// most about Config.Timeout (twice for UPnP: search, then description).
// It returns an error only when the client is closed; Offer.Errors says
// why a protocol is missing.
func (c *Client) Probe(ctx context.Context) (Offer, error) {
	if c.isClosed() {
		return Offer{}, ErrClosed
	}
	o := Offer{Gateway: c.cfg.Gateway, Local: c.cfg.Local, Errors: map[Protocol]error{}}
	var (
		wg sync.WaitGroup
		mu sync.Mutex // guards o in the goroutines
	)
	for _, p := range c.cfg.Protocols {
		wg.Go(func() {
			var err error
			switch p {
			case PCP:
				err = c.probePCP(ctx)
				mu.Lock()
				o.PCP = err == nil
				mu.Unlock()
			case PMP:
				var ext netip.Addr
				ext, err = c.pmpExternal(ctx)
				mu.Lock()
				o.PMP, o.PMPExternal = err == nil, ext
				mu.Unlock()
			case UPnP:
				var loc string
				var svc IGDService
				loc, svc, err = c.discoverUPnP(ctx)
				mu.Lock()
				o.UPnP, o.UPnPLocation, o.UPnPService = err == nil, loc, svc
				mu.Unlock()
			}
			if err != nil {
				mu.Lock()
				o.Errors[p] = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return o, nil
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Close deletes every mapping the client still holds (best effort, each
// within Config.Timeout) and stops their renewal. It is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	ms := slices.Collect(maps.Keys(c.mappings))
	c.mu.Unlock()
	var errs []error
	for _, m := range ms {
		errs = append(errs, m.Close())
	}
	return errors.Join(errs...)
}

// exchange sends req to the gateway's port from a fresh socket,
// retransmitting at 250 ms, 500 ms, 1 s... until accept takes an answer or
// Config.Timeout (or ctx) ends. Datagrams from any other address (or, when
// strictPort, another port) are dropped and counted; answers accept
// refuses with an error are counted as malformed.
func (c *Client) exchange(ctx context.Context, port uint16, strictPort bool, req []byte, accept func([]byte) (bool, error)) error {
	conn, err := c.cfg.ListenUDP(netip.AddrPortFrom(c.cfg.Local, 0))
	if err != nil {
		return fmt.Errorf("portmap: listen: %w", err)
	}
	defer conn.Close()
	end := time.Now().Add(c.cfg.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(end) {
		end = d
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
	defer stop()
	to := netip.AddrPortFrom(c.cfg.Gateway, port)
	buf := make([]byte, maxSSDPResponse+1)
	interval := firstRetransmit
	for {
		if _, err := conn.WriteToUDPAddrPort(req, to); err != nil {
			return fmt.Errorf("portmap: send to %v: %w", to, err)
		}
		next := time.Now().Add(interval)
		interval *= 2
		if next.After(end) {
			next = end
		}
		_ = conn.SetReadDeadline(next)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if !time.Now().Before(end) {
					return fmt.Errorf("%w (%v) within %v", ErrNoAnswer, to, c.cfg.Timeout)
				}
				break // retransmit
			}
			if from.Addr().Unmap() != c.cfg.Gateway || (strictPort && from.Port() != port) {
				c.stats.foreign.Add(1)
				continue
			}
			done, err := accept(buf[:n])
			if err != nil {
				var re *ResultError
				if errors.As(err, &re) {
					return err
				}
				c.stats.malformed.Add(1)
				continue
			}
			if done {
				return nil
			}
		}
	}
}
