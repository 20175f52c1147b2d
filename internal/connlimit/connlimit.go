// Package connlimit caps the connections a TCP listener holds open: in all
// and per source address. It exists because the roles of one process share
// one descriptor table (RLIMIT_NOFILE): 20,000 idle keep-alive connections
// to the signaling port once used up every descriptor of `traverse serve`,
// after which STUN over TCP, the bus, /healthz and TURN allocations failed
// too. Each role wraps its TCP listeners in a Listener whose total cap is
// that role's share of the descriptor budget (see Split), so a flood of one
// role stops at its own budget.
//
// A connection over a cap is accepted and closed at once (and counted): the
// kernel's backlog is not left to fill, which would stall every client
// behind the flood, and the descriptor is held only for the moment it takes
// to close it.
package connlimit

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"github.com/traverse-rtc/traverse/internal/persource"
)

// Limits are one listener's caps. Zero values mean no cap.
type Limits struct {
	// MaxConns caps the connections open at once from every source.
	MaxConns int
	// MaxConnsPerAddr caps the connections open at once from one source
	// address (one IPv4 address; one IPv6 /64).
	MaxConnsPerAddr int
	// Exempt are sources the per-address cap does not apply to, e.g. a
	// reverse proxy through which every client arrives. They still count
	// toward MaxConns.
	Exempt []netip.Prefix
}

// Refusal reasons, the values of the refused counter's reason label.
const (
	ReasonTotal   = "total"
	ReasonPerAddr = "per_addr"
)

// Listener is a net.Listener that refuses connections over its Limits.
// Accept returns only connections within the caps; each counts until it is
// closed.
type Listener struct {
	net.Listener
	lim Limits
	m   *Metrics

	mu      sync.Mutex // guards open and perAddr
	open    int
	perAddr persource.Counts
}

// New wraps ln. m may be nil (no metrics; the counts are still kept).
func New(ln net.Listener, lim Limits, m *Metrics) *Listener {
	if m == nil {
		m = discard()
	}
	return &Listener{Listener: ln, lim: lim, m: m}
}

// Accept waits for the next connection within the caps. Connections over a
// cap are closed and counted here and never returned. Errors of the inner
// listener are returned as they are (net/http backs off on EMFILE).
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := persource.Key(remoteAddr(c))
		if reason := l.admit(key); reason != "" {
			l.m.refused(reason)
			_ = c.Close()
			continue
		}
		l.m.accepted.Inc()
		l.m.open.Inc()
		return &Conn{Conn: c, l: l, key: key}, nil
	}
}

// admit counts a new connection from key, or returns why it is refused.
func (l *Listener) admit(key netip.Prefix) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lim.MaxConns > 0 && l.open >= l.lim.MaxConns {
		return ReasonTotal
	}
	limit := l.lim.MaxConnsPerAddr
	if l.exemptLocked(key) {
		limit = 0
	}
	if !l.perAddr.Take(key, 1, limit) {
		return ReasonPerAddr
	}
	l.open++
	return ""
}

func (l *Listener) exemptLocked(key netip.Prefix) bool {
	for _, p := range l.lim.Exempt {
		if p.Contains(key.Addr()) {
			return true
		}
	}
	return false
}

func (l *Listener) release(key netip.Prefix) {
	l.mu.Lock()
	l.open--
	l.perAddr.Give(key, 1)
	l.mu.Unlock()
	l.m.open.Dec()
}

// Open returns the number of accepted connections not yet closed.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// OpenFrom returns the open connections counted against addr's key.
func (l *Listener) OpenFrom(addr netip.Addr) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.perAddr.Get(persource.Key(addr))
}

func remoteAddr(c net.Conn) netip.Addr {
	switch a := c.RemoteAddr().(type) {
	case *net.TCPAddr:
		return a.AddrPort().Addr()
	case nil:
		return netip.Addr{}
	default:
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return netip.Addr{}
		}
		return ap.Addr()
	}
}

// Conn is an accepted connection; closing it frees its place under the caps.
type Conn struct {
	net.Conn
	l        *Listener
	key      netip.Prefix
	closed   atomic.Bool
	timedOut atomic.Bool
}

// Close closes the connection and frees its place. It is idempotent.
func (c *Conn) Close() error {
	err := c.Conn.Close()
	if c.closed.CompareAndSwap(false, true) {
		c.l.release(c.key)
	}
	return err
}

// Read reads from the connection and counts, once per connection, a read
// that ends at its deadline (for net/http: the header or idle timeout).
func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && c.timedOut.CompareAndSwap(false, true) {
		c.l.m.timeouts.Inc()
	}
	return n, err
}

// NetConn returns the wrapped connection, for callers that need its
// concrete type (SyscallConn, TCP options). Closing it directly does not
// free the place: close the Conn.
func (c *Conn) NetConn() net.Conn { return c.Conn }
