package stun

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/traverse-rtc/traverse/internal/persource"
	"github.com/traverse-rtc/traverse/internal/tlsutil"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

const (
	// tcpWrite bounds one response write on a stream.
	tcpWrite = 10 * time.Second
	// bindAttempts bounds the retries when port 0 asked for a free port
	// and the alternate port (port + 1) turned out to be taken.
	bindAttempts = 20
)

// Server is a STUN server. New binds its sockets; Run serves them until
// its context ends or Close is called.
type Server struct {
	cfg resolved
	log *slog.Logger
	m   *metrics
	ep  endpoints

	// udp[i] are the sockets of endpoint i (see endpoints); udp[0] holds
	// cfg.Readers SO_REUSEPORT shards, the others one socket each and
	// only with RFC 5780.
	udp   [4][]*udpio.Conn
	tcpLn net.Listener
	tlsLn net.Listener

	// kernel is the kernel path (Config.Offload); nil without it.
	kernel kernelAnswerer

	// rate limits the answers per source; nil without a limit.
	rate *persource.Rate

	mu      sync.Mutex // guards conns, perAddr and closed
	conns   map[net.Conn]struct{}
	perAddr persource.Counts // open connections by source
	closed  bool

	serving   atomic.Bool
	started   atomic.Bool
	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup // every goroutine Run started
}

// New validates cfg and binds every socket of the server. It serves once
// Run is called; Close releases what New took if Run never is.
func New(cfg Config) (*Server, error) {
	rc, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(rc.Registerer)
	if err != nil {
		return nil, fmt.Errorf("stun: metrics: %w", err)
	}
	ctx := context.Background()
	s := &Server{cfg: rc, log: rc.Log, m: m, conns: map[net.Conn]struct{}{}, done: make(chan struct{})}
	if rc.Rate > 0 {
		s.rate = persource.NewRate(float64(rc.Rate), rc.RateBurst)
	}
	for attempt := 0; ; attempt++ {
		err = s.bind(ctx)
		if err == nil {
			break
		}
		s.closeSockets()
		if rc.listen.Port() != 0 || attempt >= bindAttempts || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, err
		}
	}
	if rc.TLSListen.IsValid() {
		tc, err := tlsutil.ServerConfig(rc.TLSCert, rc.TLSKey, "traverse stun", rc.listen.Addr().String())
		if err != nil {
			s.closeSockets()
			return nil, fmt.Errorf("stun: tls: %w", err)
		}
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp", rc.TLSListen.String())
		if err != nil {
			s.closeSockets()
			return nil, fmt.Errorf("stun: tls listen: %w", err)
		}
		s.tlsLn = tls.NewListener(ln, tc)
	}
	if err := s.offload(); err != nil {
		s.closeSockets()
		return nil, err
	}
	return s, nil
}

// bind opens the UDP sockets (and the TCP listener on the primary address).
func (s *Server) bind(ctx context.Context) error {
	s.udp = [4][]*udpio.Conn{}
	s.tcpLn = nil
	o := udpio.Options{Batch: s.cfg.Batch, ReadBuffer: 4 << 20, WriteBuffer: 4 << 20}
	primary, err := udpio.ListenGroup(ctx, "udp", s.cfg.listen.String(), s.cfg.Readers, o)
	if err != nil {
		return fmt.Errorf("stun: %w", err)
	}
	s.udp[0] = primary
	p := primary[0].LocalAddr()
	s.ep = endpoints{}
	s.ep.addrs[0] = p
	if s.cfg.other.IsValid() {
		altPort := uint16(s.cfg.OtherPort)
		if altPort == 0 {
			altPort = p.Port() + 1
		}
		if altPort == 0 {
			return fmt.Errorf("stun: listen port %d leaves no alternate port: %w", p.Port(), syscall.EADDRINUSE)
		}
		s.ep.rfc5780 = true
		s.ep.addrs[1] = netip.AddrPortFrom(s.cfg.other, p.Port())
		s.ep.addrs[2] = netip.AddrPortFrom(p.Addr(), altPort)
		s.ep.addrs[3] = netip.AddrPortFrom(s.cfg.other, altPort)
		for i := 1; i < 4; i++ {
			c, err := udpio.Listen(ctx, "udp", s.ep.addrs[i].String(), o)
			if err != nil {
				return fmt.Errorf("stun: rfc 5780 socket: %w", err)
			}
			s.udp[i] = []*udpio.Conn{c}
		}
	} else {
		for i := 1; i < 4; i++ {
			s.ep.addrs[i] = p
		}
	}
	if !s.cfg.NoTCP {
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp", p.String())
		if err != nil {
			return fmt.Errorf("stun: tcp: %w", err)
		}
		s.tcpLn = ln
	}
	return nil
}

// Addr is the primary UDP (and TCP) address.
func (s *Server) Addr() netip.AddrPort { return s.ep.addrs[0] }

// OtherAddr is the RFC 5780 alternate address (other IP, other port), or
// the zero value when RFC 5780 is off.
func (s *Server) OtherAddr() netip.AddrPort {
	if !s.ep.rfc5780 {
		return netip.AddrPort{}
	}
	return s.ep.addrs[3]
}

// Endpoints returns the four RFC 5780 addresses: primary, other IP, other
// port, other IP and port. Without RFC 5780 all four are the primary.
func (s *Server) Endpoints() [4]netip.AddrPort { return s.ep.addrs }

// TCPAddr is the TCP listener's address, if any.
func (s *Server) TCPAddr() netip.AddrPort { return lnAddr(s.tcpLn) }

// TLSAddr is the TLS listener's address, if any.
func (s *Server) TLSAddr() netip.AddrPort { return lnAddr(s.tlsLn) }

func optAddr(a netip.AddrPort) string {
	if !a.IsValid() {
		return "off"
	}
	return a.String()
}

func lnAddr(ln net.Listener) netip.AddrPort {
	if ln == nil {
		return netip.AddrPort{}
	}
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// Ready reports whether the server is serving; it is the admin /readyz
// check.
func (s *Server) Ready() error {
	if !s.serving.Load() {
		return ErrNotReady
	}
	return nil
}

// Run serves until ctx is done or Close is called, then closes every
// socket and waits for its goroutines.
func (s *Server) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return ErrClosed
	}
	s.mu.Lock()
	closed := s.closed
	if !closed {
		for i, conns := range s.udp {
			for _, c := range conns {
				s.wg.Add(1)
				go s.readUDP(c, i)
			}
		}
		for _, ln := range []struct {
			l net.Listener
			t transport
		}{{s.tcpLn, tcp}, {s.tlsLn, tlsT}} {
			if ln.l != nil {
				s.wg.Add(1)
				go s.accept(ln.l, ln.t)
			}
		}
	}
	s.mu.Unlock()
	if closed {
		return ErrClosed
	}
	s.serving.Store(true)
	s.log.Info("stun serving", "udp", s.ep.addrs[0].String(), "rfc5780", s.ep.rfc5780,
		"other", optAddr(s.OtherAddr()), "tcp", optAddr(s.TCPAddr()), "tls", optAddr(s.TLSAddr()),
		"readers", len(s.udp[0]))
	select {
	case <-ctx.Done():
	case <-s.done:
	}
	return s.Close()
}

// Close stops the server, releasing every socket, and waits for the
// goroutines Run started. It is idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.serving.Store(false)
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.done)
		s.closeSockets()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	})
	s.wg.Wait()
	return nil
}

func (s *Server) closeSockets() {
	for _, conns := range s.udp {
		for _, c := range conns {
			c.Close()
		}
	}
	if s.tcpLn != nil {
		s.tcpLn.Close()
	}
	if s.tlsLn != nil {
		s.tlsLn.Close()
	}
	if s.kernel != nil {
		s.kernel.Close()
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// readUDP is the loop of one UDP socket: read a batch, answer it, write the
// answers in one batch. It allocates nothing per datagram.
func (s *Server) readUDP(c *udpio.Conn, via int) {
	defer s.wg.Done()
	h := newHandler(s.ep, s.cfg.Software)
	// One spare word lets an oversized datagram show as such.
	in := udpio.NewMessages(s.cfg.Batch, maxRequest+4)
	out := udpio.NewMessages(s.cfg.Batch, maxRequest+4)
	var t tally
	for {
		n, err := c.ReadBatch(in)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.isClosed() {
				return
			}
			s.log.Debug("stun: read", "err", err)
			continue
		}
		var now int64
		if s.rate != nil {
			now = s.rate.Now()
		}
		k := 0
		for i := 0; i < n; i++ {
			if s.rate != nil && !s.rate.AllowAt(in[i].Addr.Addr(), now) {
				t.dropped[dropRateLimited]++
				continue
			}
			r := h.handle(in[i].Payload(), in[i].Addr, via, udp, out[k].Buf[:0])
			t.add(&r)
			if r.drop != dropNone {
				continue
			}
			if r.from == via {
				out[k].N = len(r.out)
				out[k].Addr = r.dst
				k++
				continue
			}
			// A CHANGE-REQUEST answer leaves from another socket: rare
			// (discovery only), so one write.
			if err := s.udp[r.from][0].WriteTo(r.out, r.dst); err != nil {
				s.m.sendFail.Inc()
			}
		}
		if k > 0 {
			if sent, err := c.WriteBatch(out[:k]); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				s.m.sendFail.Add(float64(k - sent))
			}
		}
		s.m.flush(udp, &t)
	}
}

func (s *Server) accept(ln net.Listener, t transport) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.isClosed() {
				return
			}
			s.log.Warn("stun: accept", "err", err)
			select {
			case <-s.done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		src := remoteAddr(c)
		key := persource.Key(src.Addr())
		refused := -1
		s.mu.Lock()
		switch {
		case s.closed:
			refused = numRefusals
		case len(s.conns) >= s.cfg.MaxTCPConns:
			refused = refuseTotal
		case !s.perAddr.Take(key, 1, s.cfg.MaxTCPConnsPerAddr):
			refused = refusePerAddr
		default:
			s.conns[c] = struct{}{}
			s.wg.Add(1)
		}
		s.mu.Unlock()
		if refused >= 0 {
			if refused < numRefusals {
				s.m.tcpRefuse[refused].Inc()
			}
			c.Close()
			continue
		}
		s.m.tcpConns.Inc()
		go s.serveConn(c, t, src, key)
	}
}

// remoteAddr is c's peer, IPv4 unmapped.
func remoteAddr(c net.Conn) netip.AddrPort {
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// serveConn answers the requests of one TCP or TLS connection from src
// (whose persource.Key is key). STUN over a stream frames itself: the header's
// length says where a message ends.
//
// A connection must have a request answered within FirstMessageTimeout of
// its accept (TLS handshake included), then one at least every
// IdleTimeout: an idle or silent one would otherwise hold one of
// MaxTCPConns for as long as its peer likes.
func (s *Server) serveConn(c net.Conn, t transport, src netip.AddrPort, key netip.Prefix) {
	defer s.wg.Done()
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.perAddr.Give(key, 1)
		s.mu.Unlock()
		s.m.tcpConns.Dec()
	}()
	h := newHandler(s.ep, s.cfg.Software)
	in := make([]byte, maxRequest)
	out := make([]byte, 0, maxRequest)
	var tl tally
	deadline := time.Now().Add(s.cfg.FirstMessageTimeout)
	answered := false
	// The TLS handshake writes too.
	_ = c.SetDeadline(deadline)
	timedOut := func(err error) {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if answered {
				s.m.timeouts[timeoutIdle].Inc()
			} else {
				s.m.timeouts[timeoutFirst].Inc()
			}
		}
	}
	for {
		_ = c.SetReadDeadline(deadline)
		if _, err := io.ReadFull(c, in[:headerSize]); err != nil {
			timedOut(err)
			return
		}
		l := int(binary.BigEndian.Uint16(in[2:4]))
		if r := check(in[:headerSize]); r == dropNotSTUN || r == dropBadCookie || headerSize+l > maxRequest {
			// The framing is lost: count and hang up.
			if r == dropNone || r == dropBadLength {
				r = dropOversize
			}
			tl.dropped[r]++
			s.m.flush(t, &tl)
			return
		}
		if _, err := io.ReadFull(c, in[headerSize:headerSize+l]); err != nil {
			timedOut(err)
			return
		}
		if !s.rate.Allow(src.Addr()) {
			tl.dropped[dropRateLimited]++
			s.m.flush(t, &tl)
			continue
		}
		r := h.handle(in[:headerSize+l], src, 0, t, out)
		tl.add(&r)
		s.m.flush(t, &tl)
		if r.drop != dropNone {
			continue
		}
		_ = c.SetWriteDeadline(time.Now().Add(tcpWrite))
		if _, err := c.Write(r.out); err != nil {
			return
		}
		// Only answered requests keep a connection: dropped ones (bad
		// framing inside, over the rate) do not move the deadline.
		answered = true
		deadline = time.Now().Add(s.cfg.IdleTimeout)
	}
}
