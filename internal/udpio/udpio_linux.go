//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package udpio

import (
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Conn is a batched UDP socket. See the package documentation.
type Conn struct {
	uc *net.UDPConn
	rc syscall.RawConn
	v6 bool // the socket is AF_INET6

	// gro: reads carry the UDP_GRO segment size (Options.Coalesce); gso:
	// WriteBatch coalesces runs with UDP_SEGMENT, until the kernel says
	// the device cannot (EIO).
	gro bool
	gso atomic.Bool
	// refused counts the runs the kernel would not segment (sent one
	// datagram at a time instead)
	refused atomic.Uint64
	rc2     coalesce
	wc      coalesce

	// Reader state, owned by the one goroutine in ReadBatch.
	r      mmsg
	rmsgs  []Message
	rn     int
	rerr   error
	readFn func(fd uintptr) bool

	// Writer state, owned by the one goroutine in WriteBatch.
	w       mmsg
	wcount  int
	woff    int
	wn      int
	werr    error
	writeFn func(fd uintptr) bool
}

// New wraps uc for batched I/O with up to batch messages per system call
// (DefaultBatch when batch <= 0). The Conn owns uc from then on.
func New(uc *net.UDPConn, batch int) (*Conn, error) {
	if batch <= 0 {
		batch = DefaultBatch
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("udpio: %w", err)
	}
	c := &Conn{
		uc: uc,
		rc: rc,
		r:  newMmsg(batch, 1),
		w:  newMmsg(batch, 1),
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		var sa unix.Sockaddr
		sa, serr = unix.Getsockname(int(fd))
		_, c.v6 = sa.(*unix.SockaddrInet6)
	}); err != nil {
		return nil, fmt.Errorf("udpio: %w", err)
	}
	if serr != nil {
		return nil, fmt.Errorf("udpio: getsockname: %w", serr)
	}
	c.readFn = c.doRead
	c.writeFn = c.doWrite
	return c, nil
}

func setReusePort(fd uintptr) error {
	return unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
}

// ReadBatch blocks until at least one datagram is queued, then fills up to
// len(msgs) messages from the queue and returns how many it filled.
func (c *Conn) ReadBatch(msgs []Message) (int, error) {
	if len(msgs) > len(c.r.hdrs) {
		msgs = msgs[:len(c.r.hdrs)]
	}
	if len(msgs) == 0 {
		return 0, nil
	}
	c.r.prepRecv(msgs)
	if c.gro {
		c.r.prepRecvGRO(&c.rc2, len(msgs))
	}
	c.rmsgs = msgs
	c.rn, c.rerr = 0, nil
	if err := c.rc.Read(c.readFn); err != nil {
		c.rmsgs = nil
		return 0, err
	}
	c.rmsgs = nil
	if c.rerr != nil {
		return 0, &net.OpError{Op: "recvmmsg", Net: "udp", Err: c.rerr}
	}
	c.r.finishRecv(msgs, c.rn)
	if c.gro {
		c.r.finishRecvGRO(&c.rc2, msgs, c.rn)
	}
	return c.rn, nil
}

func (c *Conn) doRead(fd uintptr) bool {
	n, errno := recvmmsg(fd, c.r.hdrs[:len(c.rmsgs)])
	return settle(n, errno, &c.rn, &c.rerr)
}

// settle keeps a batch system call's result for a RawConn callback: the
// count in *n, an error in *err. EAGAIN and EINTR return false, so that
// the runtime waits for the socket and calls again.
func settle(got int, errno unix.Errno, n *int, err *error) bool {
	switch errno {
	case 0:
		*n = got
	case unix.EAGAIN, unix.EINTR:
		return false
	default:
		*err = errno
	}
	return true
}

// WriteBatch sends every message, as many per system call as fit. A message
// that the kernel refuses (an unreachable or wrong-family destination) is
// skipped; WriteBatch returns how many were sent and the first such error.
func (c *Conn) WriteBatch(msgs []Message) (int, error) {
	if c.gso.Load() {
		return c.writeCoalesced(msgs)
	}
	sent := 0
	var first error
	for len(msgs) > 0 {
		k := min(len(msgs), len(c.w.hdrs))
		valid, skipped := c.w.prepSend(msgs[:k], c.v6)
		if skipped > 0 && first == nil {
			first = ErrAddrFamily
		}
		msgs = msgs[k:]
		off := 0
		for off < valid {
			c.wcount = valid - off
			c.wn, c.werr = 0, nil
			c.woff = off
			if err := c.rc.Write(c.writeFn); err != nil {
				return sent, err
			}
			if c.werr != nil {
				// The message at off failed: skip it.
				if first == nil {
					first = &net.OpError{Op: "sendmmsg", Net: "udp", Err: c.werr}
				}
				if errors.Is(c.werr, unix.EBADF) {
					return sent, net.ErrClosed
				}
				off++
				continue
			}
			sent += c.wn
			off += c.wn
		}
	}
	return sent, first
}

func (c *Conn) doWrite(fd uintptr) bool {
	n, errno := sendmmsg(fd, c.w.hdrs[c.woff:c.woff+c.wcount])
	return settle(n, errno, &c.wn, &c.werr)
}

// enableCoalesce turns on UDP_GRO and UDP GSO where the kernel has them.
func (c *Conn) enableCoalesce() {
	if SetGRO(c.uc, true) != nil {
		return
	}
	n := len(c.r.hdrs)
	c.gro = true
	c.rc2 = newCoalesce(n)
	c.wc = newCoalesce(n)
	c.gso.Store(true)
}

// Coalescing reports whether reads coalesce (UDP GRO) and writes segment
// (UDP GSO): Options.Coalesce on a kernel that has them. Writes stop
// segmenting for good when the kernel reports that the device cannot
// (EIO).
func (c *Conn) Coalescing() (reads, writes bool) { return c.gro, c.gso.Load() }

// writeCoalesced is WriteBatch with UDP GSO: as many runs per sendmmsg as
// fit. A run the kernel refuses is sent again one datagram at a time
// (EINVAL: larger than the path's MTU allows; EIO: the device has no
// checksum offload, and GSO is turned off).
func (c *Conn) writeCoalesced(msgs []Message) (int, error) {
	sent := 0
	var first error
	for len(msgs) > 0 {
		k := min(len(msgs), len(c.w.hdrs))
		chunk := msgs[:k]
		msgs = msgs[k:]
		valid, skipped := c.w.prepSendCoalesced(&c.wc, chunk, c.v6)
		if skipped > 0 && first == nil {
			first = ErrAddrFamily
		}
		iv := 0 // the first iovec of header off
		for off := 0; off < valid; {
			c.wcount = valid - off
			c.wn, c.werr = 0, nil
			c.woff = off
			if err := c.rc.Write(c.writeFn); err != nil {
				return sent, err
			}
			for _, n := range c.wc.count[off : off+c.wn] {
				sent += n
				iv += n
			}
			off += c.wn
			if c.werr == nil {
				continue
			}
			if errors.Is(c.werr, unix.EBADF) {
				return sent, net.ErrClosed
			}
			// header off failed
			n := c.wc.count[off]
			if n > 1 {
				c.refused.Add(1)
				if errors.Is(c.werr, unix.EIO) {
					c.gso.Store(false)
				}
				for _, i := range c.wc.order[iv : iv+n] {
					if err := c.WriteTo(chunk[i].Payload(), chunk[i].Addr); err == nil {
						sent++
					} else if first == nil {
						first = err
					}
				}
			} else if first == nil {
				first = &net.OpError{Op: "sendmmsg", Net: "udp", Err: c.werr}
			}
			iv += n
			off++
		}
	}
	return sent, first
}
