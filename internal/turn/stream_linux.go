//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package turn

import (
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

// Plain TCP clients are served by the event loops, as UDP clients are: the
// connection's socket joins an engine's epoll set, the loop reads it in
// big chunks and parses every STUN and ChannelData frame of a chunk in
// place (no goroutine, no scheduler hand-off per packet, no buffer held
// by an idle connection), and frames to the client are written straight
// to the socket with a non-blocking write. What the socket does not take
// goes on a bounded per-connection backlog, drained by the loop when
// epoll reports the socket writable (EPOLLOUT is armed only then).

// streamTag marks a stream socket's events (its tag in the loop's
// udpio.Set) so the loop tells it from relay sockets.
const streamTag = 1

// streamBacklog bounds the bytes waiting for a slow TCP client; whole
// frames beyond it are dropped (queue_full), as a UDP relay would.
const streamBacklog = 256 << 10

// streamReadBuf is the loop's read buffer for stream sockets: a frame
// split across reads (up to maxFrame) plus one big read.
const streamReadBuf = maxFrame + 64<<10

// adoptStream moves a plain TCP client connection onto an event loop. It
// returns false when the connection must keep its goroutines (TLS, or the
// socket cannot be taken over).
func (s *Server) adoptStream(c net.Conn, sc *streamConn) bool {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return false
	}
	fd := -1
	var derr error
	if err := rc.Control(func(f uintptr) { fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || derr != nil {
		return false
	}
	// The duplicate keeps the socket (still non-blocking: the flag lives
	// on the shared open file); closing the Go side takes it out of Go's
	// netpoller, which would otherwise wake for every segment.
	_ = c.Close()
	sc.fd = fd
	sc.eng = s.engs[int(s.next.Add(1))%len(s.engs)]
	return true
}

// addStream registers sc's socket with the loop.
func (e *engine) addStream(sc *streamConn) error {
	e.smu.Lock()
	e.streams[int32(sc.fd)] = sc
	e.smu.Unlock()
	return e.set.Add(sc.fd, streamTag)
}

// dropStream unregisters and closes sc's socket. Called by the loop
// itself, or after the loop stopped.
func (e *engine) dropStream(sc *streamConn) {
	// Out of the index before the number is freed: the next accepted
	// socket may get it at once.
	e.smu.Lock()
	if e.streams[int32(sc.fd)] == sc {
		delete(e.streams, int32(sc.fd))
	}
	e.smu.Unlock()
	sc.wmu.Lock()
	sc.closed = true
	e.set.Remove(sc.fd)
	_ = unix.Close(sc.fd)
	sc.backlog = nil
	sc.wmu.Unlock()
}

// fromStream serves a stream socket's events: writable drains the
// backlog; readable reads chunks and handles every complete frame in
// them.
func (e *engine) fromStream(fd int, ev udpio.Event) {
	e.smu.Lock()
	sc := e.streams[int32(fd)]
	e.smu.Unlock()
	if sc == nil {
		return
	}
	if ev.Writable() && !sc.drain() {
		sc.close()
		return
	}
	if !ev.Readable() {
		return
	}
	s := e.s
	key := fiveTuple{sc.proto, sc.remote}
	out := sender{stream: sc, addr: sc.remote}
	for rounds := 0; rounds < 4; rounds++ {
		buf := e.sbuf
		k := copy(buf, sc.partial)
		n, err := unix.Read(fd, buf[k:])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return
		}
		if n <= 0 || err != nil {
			sc.close()
			return
		}
		sc.lastRead.Store(time.Now().UnixNano())
		data := buf[:k+n]
		for len(data) >= 4 {
			fl, isChan, ok := streamFrameLen(data)
			if !ok {
				s.m.badStream.Inc()
				sc.close()
				return
			}
			if fl > len(data) {
				break
			}
			// The frame's capacity ends with it: pion's integrity check
			// appends its HMAC after the message, which must not
			// overwrite the next frame.
			if isChan {
				s.relayChannelData(key, data[:fl:fl], &e.up)
			} else {
				s.handleMessage(data[:fl:fl], key, out, &e.up)
				if pc := sc.boundPeer(); pc != nil {
					e.handOver(sc, pc, data[fl:])
					return
				}
			}
			data = data[fl:]
		}
		// Keep the start of a split frame for the next read (allocates
		// only while one is pending, then reuses its buffer).
		sc.partial = append(sc.partial[:0], data...)
		if k+n < len(buf) {
			return // the socket had no more
		}
	}
}

// handOver takes a connection that a ConnectionBind bound (RFC 6062) off
// the loop and gives it to a pipe, with the client bytes read past the
// ConnectionBind and whatever the socket had not taken yet.
func (e *engine) handOver(sc *streamConn, pc *peerConn, early []byte) {
	early = append([]byte(nil), early...) // out of the loop's buffer
	e.smu.Lock()
	delete(e.streams, int32(sc.fd))
	e.smu.Unlock()
	sc.wmu.Lock()
	sc.closed = true // no more writes from the loops
	e.set.Remove(sc.fd)
	pending := sc.backlog
	sc.backlog = nil
	sc.wmu.Unlock()
	f := os.NewFile(uintptr(sc.fd), "turn-data")
	c, err := net.FileConn(f) // a duplicate in Go's netpoller
	_ = f.Close()
	sc.forget()
	if err != nil {
		pc.close(e.s)
		return
	}
	e.s.pipe(pc, c, early, pending)
}

// enqueueLoop writes b to a loop-served TCP client: straight to the
// socket when nothing is waiting before it, else (and for what the socket
// did not take) onto the backlog, arming EPOLLOUT. A frame is dropped
// whole, never in part, so the stream stays framed.
func (sc *streamConn) enqueueLoop(b []byte) bool {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	if sc.closed {
		return false
	}
	if len(sc.backlog) == 0 {
		n, err := writeAll(sc.fd, b)
		if n == len(b) {
			return true
		}
		if err != nil && err != unix.EAGAIN {
			return false // broken: the loop sees the error and closes
		}
		if n == 0 && len(b) > streamBacklog {
			return false
		}
		b = b[n:]
		_ = sc.eng.set.SetWriteInterest(sc.fd, streamTag, true)
	} else if len(sc.backlog)+len(b) > streamBacklog {
		return false
	}
	sc.backlog = append(sc.backlog, b...)
	return true
}

// drain writes what it can of the backlog; false means the socket broke.
func (sc *streamConn) drain() bool {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	if sc.closed || len(sc.backlog) == 0 {
		return !sc.closed
	}
	n, err := writeAll(sc.fd, sc.backlog)
	if err != nil && err != unix.EAGAIN {
		return false
	}
	sc.backlog = sc.backlog[:copy(sc.backlog, sc.backlog[n:])]
	if len(sc.backlog) == 0 {
		if cap(sc.backlog) > 64<<10 {
			sc.backlog = nil
		}
		_ = sc.eng.set.SetWriteInterest(sc.fd, streamTag, false)
	}
	return true
}

// writeAll writes b to non-blocking fd until it is written or the socket
// refuses more; it returns how much was written and the error that
// stopped it.
func writeAll(fd int, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := unix.Write(fd, b[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if k <= 0 {
			return n, unix.EAGAIN
		}
		n += k
	}
	return n, nil
}

func closeFD(fd int) error { return unix.Close(fd) }

// shutdownFD ends both directions of a stream socket, waking its reader.
func shutdownFD(fd int) error { return unix.Shutdown(fd, unix.SHUT_RDWR) }

// reuseControl lets a TCP allocation's listener and its outgoing
// connections share the relayed address (RFC 6062 section 5.2: Connect
// dials from it). The port allocator never hands one port out twice.
func reuseControl(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// socketRoom reports whether a TLS record carrying n bytes surely fits in
// the TCP socket's send buffer, so that writing it cannot block: fewer
// than 4 KiB unsent or unacknowledged bytes queued (TIOCOUTQ), and the
// record, counted four times over for the kernel's per-buffer overhead,
// within the smallest send buffer (16 KiB).
func socketRoom(rc syscall.RawConn, n int) bool {
	queued := -1
	_ = rc.Control(func(fd uintptr) {
		if q, err := unix.IoctlGetInt(int(fd), unix.TIOCOUTQ); err == nil {
			queued = q
		}
	})
	return queued >= 0 && queued < 4<<10 && 4*(n+64) < 12<<10
}
