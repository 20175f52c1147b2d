package p2p

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/traverse-rtc/traverse/client/nat"
	"github.com/traverse-rtc/traverse/client/portmap"
)

// Option configures Connect.
type Option func(*options) error

// TURNServer is one TURN server to fall back to.
type TURNServer struct {
	// Addr is host:port.
	Addr string
	// Transport is "udp", "tcp" or "tls" (TLS on a 443-style port).
	Transport string
	// Username, Password and Realm are long-term credentials (RFC 8489
	// section 9.2), or REST ones a signaling service minted.
	Username, Password, Realm string
	// ServerName is checked against a TLS server's certificate (default:
	// Addr's host); InsecureSkipVerify skips the check (tests only).
	ServerName         string
	InsecureSkipVerify bool
}

// Network is where Connect opens its sockets: the host's network by
// default; a test lab passes one that opens them in a network namespace.
type Network interface {
	ListenUDP(local netip.AddrPort) (net.PacketConn, error)
	Dial(ctx context.Context, network, address string) (net.Conn, error)
	// InterfaceAddrs lists the addresses host candidates come from.
	InterfaceAddrs() ([]netip.Addr, error)
}

type options struct {
	stun          []string
	turn          []TURNServer
	natDiscover   func(ctx context.Context) (nat.Report, error)
	noNAT         bool
	directTimeout time.Duration
	turnTimeout   time.Duration
	stunTimeout   time.Duration
	upgrade       time.Duration
	keepalive     time.Duration
	pathTimeout   time.Duration
	reorderHold   time.Duration
	handoverHold  time.Duration
	relayOnly     bool
	noHost        bool
	local         netip.AddrPort
	static        []byte // private, public follow
	staticPub     []byte
	peerKey       []byte
	net           Network
	onChange      func(PathChange)
	log           *slog.Logger
	recvQueue     int
	relayNodes    RelayNodeFunc
	region        string
	portmap       *portmap.Config
	portmapSet    bool
}

// WithSTUN sets the STUN servers (host:port) the public address is learnt
// from: all are asked at once and the first to answer (the lowest RTT)
// gives it. The first is also asked for the NAT's behaviour (client/nat,
// RFC 5780) in the background unless WithoutNATDiscovery.
func WithSTUN(servers ...string) Option {
	return func(o *options) error { o.stun = append(o.stun, servers...); return nil }
}

// WithTURN adds TURN servers, tried after the direct path fails: every
// UDP one first, then TCP, then TLS.
func WithTURN(servers ...TURNServer) Option {
	return func(o *options) error {
		for _, s := range servers {
			if s.Transport != "udp" && s.Transport != "tcp" && s.Transport != "tls" {
				return fmt.Errorf("%w: TURN transport %q", ErrConfig, s.Transport)
			}
			if s.Addr == "" {
				return fmt.Errorf("%w: TURN server without address", ErrConfig)
			}
		}
		o.turn = append(o.turn, servers...)
		return nil
	}
}

// WithDirectTimeout is how long direct probing runs before TURN is tried
// (the patent's test-packet timeout). Default 2s; probing goes on
// afterwards in the background.
func WithDirectTimeout(d time.Duration) Option {
	return durOpt(func(o *options) *time.Duration { return &o.directTimeout }, d)
}

// WithSTUNTimeout bounds the wait for the first STUN answer. Default 1s;
// when none comes UDP counts as blocked: TURN over UDP is skipped and TURN
// over TCP/TLS starts at once.
func WithSTUNTimeout(d time.Duration) Option {
	return durOpt(func(o *options) *time.Duration { return &o.stunTimeout }, d)
}

// WithTURNTimeout bounds each TURN allocation attempt. Default 2s.
func WithTURNTimeout(d time.Duration) Option {
	return durOpt(func(o *options) *time.Duration { return &o.turnTimeout }, d)
}

// WithUpgradeInterval is how often, while the flow runs on a relay, the
// better (direct) candidate pairs are probed. Default 500ms: the flow moves
// to direct within about twice this of direct becoming possible. Each probe
// costs a 42-byte datagram per pair.
func WithUpgradeInterval(d time.Duration) Option {
	return durOpt(func(o *options) *time.Duration { return &o.upgrade }, d)
}

// WithKeepalive is how often the live path is probed (its RTT, and NAT
// bindings kept open). Default 1s.
func WithKeepalive(d time.Duration) Option {
	return durOpt(func(o *options) *time.Duration { return &o.keepalive }, d)
}

// WithPathTimeout declares the live path dead when none of its probes is
// answered for this long; the flow moves to the next working path. Default 4s.
func WithPathTimeout(d time.Duration) Option {
	return durOpt(func(o *options) *time.Duration { return &o.pathTimeout }, d)
}

// WithReorderHold is how long a gap in the data sequence is waited for
// before it is declared lost. Default 40ms; right after the peer changed
// path the handover hold applies (WithHandoverHold, default 500ms) so that
// packets still in flight on the old path arrive and take their place.
func WithReorderHold(d time.Duration) Option {
	return durOpt(func(o *options) *time.Duration { return &o.reorderHold }, d)
}

// WithHandoverHold: see WithReorderHold.
func WithHandoverHold(d time.Duration) Option {
	return durOpt(func(o *options) *time.Duration { return &o.handoverHold }, d)
}

func durOpt(f func(o *options) *time.Duration, d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("%w: duration %v", ErrConfig, d)
		}
		*f(o) = d
		return nil
	}
}

// WithRelayOnly never tries the direct path: the peers' addresses stay
// hidden from each other behind TURN (ICE's "relay" policy).
func WithRelayOnly() Option { return func(o *options) error { o.relayOnly = true; return nil } }

// WithoutHostCandidates does not advertise local interface addresses.
func WithoutHostCandidates() Option { return func(o *options) error { o.noHost = true; return nil } }

// WithoutNATDiscovery skips the RFC 5780 behaviour tests.
func WithoutNATDiscovery() Option { return func(o *options) error { o.noNAT = true; return nil } }

// WithNATDiscovery replaces how the NAT behaviour is found (a lab runs
// nat.Discover inside a namespace).
func WithNATDiscovery(f func(ctx context.Context) (nat.Report, error)) Option {
	return func(o *options) error { o.natDiscover = f; return nil }
}

// WithLocal binds the UDP socket to addr (default: any address, a free port).
func WithLocal(addr netip.AddrPort) Option {
	return func(o *options) error { o.local = addr; return nil }
}

// WithStaticKey sets this peer's long-term X25519 key pair (GenerateKey);
// default a fresh one per Conn.
func WithStaticKey(private, public []byte) Option {
	return func(o *options) error {
		if len(private) != 32 || len(public) != 32 {
			return fmt.Errorf("%w: static key must be 32+32 bytes", ErrConfig)
		}
		o.static, o.staticPub = private, public
		return nil
	}
}

// WithPeerKey pins the peer's static public key: the handshake fails with
// ErrHandshake for any other, whatever the signaling service says.
func WithPeerKey(public []byte) Option {
	return func(o *options) error {
		if len(public) != 32 {
			return fmt.Errorf("%w: peer key must be 32 bytes", ErrConfig)
		}
		o.peerKey = public
		return nil
	}
}

// WithNetwork opens sockets through n.
func WithNetwork(n Network) Option { return func(o *options) error { o.net = n; return nil } }

// OnPathChange calls f, from the Conn's own goroutine, on every change of
// the path this side sends on (the first path too). f must not block.
func OnPathChange(f func(PathChange)) Option {
	return func(o *options) error { o.onChange = f; return nil }
}

// WithLogger logs path changes and failures to l (default: nothing).
func WithLogger(l *slog.Logger) Option { return func(o *options) error { o.log = l; return nil } }

// WithRecvQueue bounds the datagrams received but not yet read; beyond
// it, new ones are dropped and counted (Stats.QueueDrops). Default 1024.
func WithRecvQueue(n int) Option {
	return func(o *options) error {
		if n <= 0 {
			return fmt.Errorf("%w: receive queue %d", ErrConfig, n)
		}
		o.recvQueue = n
		return nil
	}
}

func (o *options) defaults() {
	def := func(p *time.Duration, d time.Duration) {
		if *p == 0 {
			*p = d
		}
	}
	def(&o.directTimeout, 2*time.Second)
	def(&o.turnTimeout, 2*time.Second)
	def(&o.stunTimeout, time.Second)
	def(&o.upgrade, 500*time.Millisecond)
	def(&o.keepalive, time.Second)
	def(&o.pathTimeout, 4*time.Second)
	def(&o.reorderHold, 40*time.Millisecond)
	def(&o.handoverHold, 500*time.Millisecond)
	if o.recvQueue == 0 {
		o.recvQueue = 1024
	}
	if o.net == nil {
		o.net = hostNetwork{}
		if !o.portmapSet && !o.relayOnly {
			o.portmap = &portmap.Config{}
		}
	}
	if o.relayOnly {
		o.portmap = nil
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	if o.natDiscover == nil && !o.noNAT && len(o.stun) > 0 {
		server := o.stun[0]
		o.natDiscover = func(ctx context.Context) (nat.Report, error) {
			return nat.Discover(ctx, nat.Config{Server: server, RTO: 100 * time.Millisecond, Attempts: 3})
		}
	}
}

type hostNetwork struct{}

func (hostNetwork) ListenUDP(local netip.AddrPort) (net.PacketConn, error) {
	return net.ListenUDP("udp", net.UDPAddrFromAddrPort(local))
}

func (hostNetwork) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

func (hostNetwork) InterfaceAddrs() ([]netip.Addr, error) { return InterfaceAddrs() }

// InterfaceAddrs lists this host's unicast addresses (not link-local) for
// host candidates; a Network that runs elsewhere calls it there.
func InterfaceAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range as {
		p, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := p.Addr().Unmap()
		if ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified() {
			continue
		}
		out = append(out, ip)
	}
	return out, nil
}
