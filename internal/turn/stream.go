package turn

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/traverse-rtc/traverse/internal/persource"
)

func cryptoRead(b []byte) (int, error) { return rand.Read(b) }

// streamQueue bounds the frames waiting for a slow stream client; beyond
// it, frames are dropped (UDP semantics: a relay must not buffer without
// bound) and counted as queue_full.
const streamQueue = 512

// maxFrame is the largest STUN or ChannelData frame (a 16-bit length plus
// header).
const maxFrame = 4 + 65535 + 3 + stunHeaderSize

var framePool = sync.Pool{New: func() any { b := make([]byte, 0, headroom+udpio2KiB); return &b }}

const udpio2KiB = 2048 + 4

// streamConn is one TCP or TLS client connection (RFC 8656 section 5: the
// allocation lives as long as the connection). One reader and one writer
// goroutine; the writer drains a bounded queue.
type streamConn struct {
	s      *Server
	c      net.Conn
	proto  uint8
	remote netip.AddrPort
	// datagram is set for DTLS: each read is one message, and ChannelData
	// is not padded (RFC 8656 section 12.5).
	datagram bool
	q        chan *[]byte
	done     chan struct{}
	once     sync.Once

	tlsHandshaken atomic.Bool // the TLS handshake is done: direct writes are safe

	// src is the remote's source key (per-source connection cap);
	// opened, lastRead (unix nanoseconds) and authed drive the
	// unauthenticated and idle deadlines (Server.sweepStreams).
	src      netip.Prefix
	opened   int64
	lastRead atomic.Int64
	authed   atomic.Bool

	mu    sync.Mutex // guards alloc and bound
	alloc *allocation
	// bound is set by a successful ConnectionBind (RFC 6062): the reader
	// hands the connection over to a pipe once that message is handled.
	bound *peerConn
	// handoff is closed by writeLoop when it has written everything
	// queued before the hand-over and stopped.
	handoff chan struct{}

	// raw is the TCP socket for direct writes (nil for TLS).
	raw syscall.RawConn
	// tlsRaw is a TLS connection's TCP socket: a frame goes through
	// crypto/tls from the relaying goroutine when nothing is queued and
	// the socket has room enough that the write cannot block.
	tlsRaw syscall.RawConn
	wmu    sync.Mutex // guards pending
	// pending counts frames queued or being written by writeLoop; while
	// it is 0 enqueue may write straight to the socket.
	pending int

	// A plain TCP client served by an event loop (stream_linux.go) has
	// eng set and no goroutines: eng reads fd, and c is closed.
	fd  int
	eng *engine
	// partial is the start of a frame split across reads (owned by the
	// loop); backlog (guarded by wmu) is what the socket did not take.
	partial []byte
	backlog []byte
	closed  bool // guarded by wmu: fd is closed
}

// accept returns ln's next connection, retrying failed accepts every
// 10 ms; false once ln is closed or the server is done.
func (s *Server) accept(ln net.Listener) (net.Conn, bool) {
	for {
		c, err := ln.Accept()
		if err == nil {
			return c, true
		}
		if errors.Is(err, net.ErrClosed) {
			return nil, false
		}
		select {
		case <-s.done:
			return nil, false
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (s *Server) acceptLoop(ln net.Listener, proto uint8) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, ok := s.accept(ln)
		if !ok {
			return
		}
		ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
		if err != nil {
			_ = c.Close()
			continue
		}
		sc := &streamConn{datagram: proto == protoDTLS, s: s, c: c, proto: proto, remote: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()),
			done: make(chan struct{}), src: persource.Key(ap.Addr()), opened: time.Now().UnixNano()}
		sc.lastRead.Store(sc.opened)
		if proto != protoTCP || !s.adoptStream(c, sc) {
			sc.q = make(chan *[]byte, streamQueue)
			if tc, ok := c.(*net.TCPConn); ok {
				sc.raw, _ = tc.SyscallConn()
			}
			if tc, ok := c.(*tls.Conn); ok {
				if nc, ok := tc.NetConn().(*net.TCPConn); ok {
					sc.tlsRaw, _ = nc.SyscallConn()
				}
			}
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			sc.closeSocket()
			return
		}
		if len(s.streams) >= s.cfg.MaxStreamConns {
			s.mu.Unlock()
			sc.closeSocket()
			s.m.quotaHits.WithLabelValues("stream_conns").Inc()
			continue
		}
		if !s.perSource.Take(sc.src, 1, s.cfg.MaxStreamConnsPerSource) {
			s.mu.Unlock()
			sc.closeSocket()
			s.m.quotaHits.WithLabelValues("stream_conns_source").Inc()
			continue
		}
		s.streams[sc] = struct{}{}
		s.mu.Unlock()
		s.m.streamConns.Inc()
		if sc.eng != nil {
			if err := sc.eng.addStream(sc); err != nil {
				s.cfg.Log.Warn("turn: epoll add stream", "err", err)
				sc.close()
			}
			continue
		}
		wg.Add(2)
		go func() { defer wg.Done(); sc.readLoop() }()
		go func() { defer wg.Done(); sc.writeLoop() }()
	}
}

func (sc *streamConn) setAlloc(a *allocation) {
	sc.mu.Lock()
	sc.alloc = a
	sc.mu.Unlock()
}

// closeSocket closes a connection that was never registered.
func (sc *streamConn) closeSocket() {
	if sc.eng != nil {
		_ = closeFD(sc.fd)
		return
	}
	_ = sc.c.Close()
}

// close ends the connection and deletes its allocation. Idempotent. A
// loop-served connection is closed only by its loop, or once the loops
// have stopped (Server.Close), so its socket is never closed under a read.
func (sc *streamConn) close() {
	sc.once.Do(func() {
		close(sc.done)
		if sc.eng != nil {
			sc.eng.dropStream(sc)
		} else {
			_ = sc.c.Close()
		}
		sc.mu.Lock()
		a := sc.alloc
		sc.mu.Unlock()
		if a != nil {
			sc.s.deleteAllocation(a)
		}
		sc.s.unregister(sc)
	})
}

// unregister takes sc out of the server's connections (once: close and
// forget run under sc.once).
func (s *Server) unregister(sc *streamConn) {
	s.mu.Lock()
	if _, ok := s.streams[sc]; ok {
		delete(s.streams, sc)
		s.perSource.Give(sc.src, 1)
	}
	s.mu.Unlock()
	s.m.streamConns.Dec()
}

// sweepStreams closes the client connections past their deadlines: no
// authenticated request within StreamAuthTimeout of opening, or no
// allocation and nothing received for StreamIdleTimeout. Without them,
// 10,000 idle connections from one address held the connection cap for
// everyone (issue 10).
func (s *Server) sweepStreams(now int64) {
	auth, idle := int64(s.cfg.StreamAuthTimeout), int64(s.cfg.StreamIdleTimeout)
	var late []*streamConn
	var reasons []string
	s.mu.RLock()
	for sc := range s.streams {
		switch {
		case auth > 0 && !sc.authed.Load() && now-sc.opened > auth:
			late, reasons = append(late, sc), append(reasons, "auth")
		case idle > 0 && now-sc.lastRead.Load() > idle && sc.idle():
			late, reasons = append(late, sc), append(reasons, "idle")
		}
	}
	s.mu.RUnlock()
	for i, sc := range late {
		s.m.timeouts.WithLabelValues(reasons[i]).Inc()
		sc.expire()
	}
}

// idle reports whether sc holds no allocation and no bound data
// connection.
func (sc *streamConn) idle() bool {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.alloc == nil && sc.bound == nil
}

// expire closes sc from outside its reader: a loop-served socket is shut
// down, and its loop, seeing the end of the stream, closes it.
func (sc *streamConn) expire() {
	if sc.eng == nil {
		sc.close()
		return
	}
	sc.wmu.Lock()
	if !sc.closed {
		_ = shutdownFD(sc.fd)
	}
	sc.wmu.Unlock()
}

func (sc *streamConn) readLoop() {
	defer sc.close()
	if tc, ok := sc.c.(*tls.Conn); ok {
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			return
		}
		_ = tc.SetDeadline(time.Time{})
		sc.tlsHandshaken.Store(true)
	}
	buf := make([]byte, maxFrame)
	key := fiveTuple{sc.proto, sc.remote}
	out := sender{stream: sc, addr: sc.remote}
	var st relayStats
	if sc.datagram {
		for {
			n, err := sc.c.Read(buf)
			if err != nil {
				return
			}
			sc.lastRead.Store(time.Now().UnixNano())
			if isChannelData(buf[:n]) {
				sc.s.relayChannelData(key, buf[:n], &st)
			} else {
				sc.s.handleMessage(buf[:n], key, out, &st)
			}
			st.flush(sc.s.m)
		}
	}
	r := bufio.NewReaderSize(sc.c, 16<<10)
	for {
		hdr, err := r.Peek(4)
		if err != nil {
			return
		}
		n, isChan, ok := streamFrameLen(hdr)
		if !ok {
			sc.s.m.badStream.Inc()
			return
		}
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return
		}
		sc.lastRead.Store(time.Now().UnixNano())
		if isChan {
			sc.s.relayChannelData(key, buf[:n], &st)
		} else {
			sc.s.handleMessage(buf[:n], key, out, &st)
			if pc := sc.boundPeer(); pc != nil {
				st.flush(sc.s.m)
				sc.handOverGoroutines(pc, r)
				return
			}
		}
		if r.Buffered() == 0 {
			st.flush(sc.s.m)
		}
	}
}

func (sc *streamConn) boundPeer() *peerConn {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.bound
}

// forget takes sc out of the server's connections without closing its
// socket: it now belongs to a pipe (RFC 6062 data connection).
func (sc *streamConn) forget() {
	sc.once.Do(func() {
		close(sc.done)
		sc.s.unregister(sc)
	})
}

// handOverGoroutines hands a bound connection served by goroutines to a
// pipe: once writeLoop has written the ConnectionBind answer and stopped,
// the client bytes already buffered past it go first.
func (sc *streamConn) handOverGoroutines(pc *peerConn, r *bufio.Reader) {
	early := make([]byte, r.Buffered())
	_, _ = io.ReadFull(r, early)
	handed := make(chan struct{})
	sc.wmu.Lock()
	sc.handoff = handed
	sc.wmu.Unlock()
	select {
	case sc.q <- nil: // after everything queued before it
	case <-sc.done:
		return
	}
	select {
	case <-handed:
	case <-sc.done:
		return
	}
	sc.forget()
	sc.s.pipe(pc, sc.c, early, nil)
}

func (sc *streamConn) writeLoop() {
	for {
		select {
		case <-sc.done:
			for {
				select {
				case b := <-sc.q:
					framePool.Put(b)
				default:
					return
				}
			}
		case b := <-sc.q:
			if b == nil { // hand-over (RFC 6062 ConnectionBind)
				_ = sc.c.SetWriteDeadline(time.Time{})
				sc.wmu.Lock()
				close(sc.handoff)
				sc.wmu.Unlock()
				return
			}
			_ = sc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, err := sc.c.Write(*b)
			framePool.Put(b)
			// No deadline left behind for a direct write to trip on (a
			// TLS write that times out breaks the connection).
			_ = sc.c.SetWriteDeadline(time.Time{})
			sc.wmu.Lock()
			sc.pending--
			sc.wmu.Unlock()
			if err != nil {
				sc.close()
			}
		}
	}
}

// enqueue sends b to the client: straight to a TCP socket when nothing is
// queued before it and the socket takes it whole without blocking (no
// hand-off to writeLoop per packet), else a copy (of what is left) goes on
// the write queue. It returns false when the queue is full.
func (sc *streamConn) enqueue(b []byte) bool {
	if sc.eng != nil {
		return sc.enqueueLoop(b)
	}
	select {
	case <-sc.done:
		return false
	default:
	}
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	if sc.pending == 0 && sc.tlsRaw != nil && sc.tlsHandshaken.Load() && socketRoom(sc.tlsRaw, len(b)) {
		// Cannot block (see socketRoom); an error is the reader's to
		// act on (closing here could deadlock the relaying loop).
		_, err := sc.c.Write(b)
		return err == nil
	}
	if sc.pending == 0 && sc.raw != nil {
		n := sc.writeDirect(b)
		if n == len(b) {
			return true
		}
		b = b[n:]
	}
	p := framePool.Get().(*[]byte)
	*p = append((*p)[:0], b...)
	select {
	case sc.q <- p:
		sc.pending++
		return true
	default:
		framePool.Put(p)
		return false
	}
}

// writeDirect makes one non-blocking write attempt and returns how much
// the socket took.
func (sc *streamConn) writeDirect(b []byte) int {
	n := 0
	_ = sc.raw.Write(func(fd uintptr) bool {
		for n < len(b) {
			k, err := unix.Write(int(fd), b[n:])
			if err == unix.EINTR {
				continue
			}
			if err != nil || k <= 0 {
				break
			}
			n += k
		}
		return true // never wait: what is left goes on the queue
	})
	return n
}
