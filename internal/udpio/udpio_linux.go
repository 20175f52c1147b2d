//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package udpio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsghdr is struct mmsghdr on 64-bit Linux.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// Conn is a batched UDP socket. See the package documentation.
type Conn struct {
	uc *net.UDPConn
	rc syscall.RawConn
	v6 bool // the socket is AF_INET6

	// Reader state, owned by the one goroutine in ReadBatch.
	rhdrs  []mmsghdr
	riov   []unix.Iovec
	rnames []unix.RawSockaddrInet6
	rmsgs  []Message
	rn     int
	rerr   error
	readFn func(fd uintptr) bool

	// Writer state, owned by the one goroutine in WriteBatch.
	whdrs   []mmsghdr
	wiov    []unix.Iovec
	wnames  []unix.RawSockaddrInet6
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
		uc:     uc,
		rc:     rc,
		rhdrs:  make([]mmsghdr, batch),
		riov:   make([]unix.Iovec, batch),
		rnames: make([]unix.RawSockaddrInet6, batch),
		whdrs:  make([]mmsghdr, batch),
		wiov:   make([]unix.Iovec, batch),
		wnames: make([]unix.RawSockaddrInet6, batch),
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
	if len(msgs) > len(c.rhdrs) {
		msgs = msgs[:len(c.rhdrs)]
	}
	if len(msgs) == 0 {
		return 0, nil
	}
	for i := range msgs {
		b := msgs[i].Buf[:cap(msgs[i].Buf)]
		c.riov[i].Base = unsafe.SliceData(b)
		c.riov[i].SetLen(len(b))
		h := &c.rhdrs[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&c.rnames[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		h.Iov = &c.riov[i]
		h.Iovlen = 1
		h.Control = nil
		h.Controllen = 0
		h.Flags = 0
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
	for i := 0; i < c.rn; i++ {
		msgs[i].N = int(c.rhdrs[i].len)
		msgs[i].Addr = decodeAddr(&c.rnames[i])
	}
	return c.rn, nil
}

func (c *Conn) doRead(fd uintptr) bool {
	n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&c.rhdrs[0])), uintptr(len(c.rmsgs)), unix.MSG_DONTWAIT, 0, 0)
	switch errno {
	case 0:
		c.rn = int(n)
		return true
	case unix.EAGAIN, unix.EINTR:
		return false
	default:
		c.rerr = errno
		return true
	}
}

// WriteBatch sends every message, as many per system call as fit. A message
// that the kernel refuses (an unreachable or wrong-family destination) is
// skipped; WriteBatch returns how many were sent and the first such error.
func (c *Conn) WriteBatch(msgs []Message) (int, error) {
	sent := 0
	var first error
	for len(msgs) > 0 {
		k := min(len(msgs), len(c.whdrs))
		valid := 0
		for i := 0; i < k; i++ {
			nl, ok := c.encodeAddr(&c.wnames[valid], msgs[i].Addr)
			if !ok {
				if first == nil {
					first = ErrAddrFamily
				}
				continue
			}
			b := msgs[i].Buf[:msgs[i].N]
			if len(b) > 0 {
				c.wiov[valid].Base = unsafe.SliceData(b)
			} else {
				c.wiov[valid].Base = nil
			}
			c.wiov[valid].SetLen(len(b))
			h := &c.whdrs[valid].hdr
			h.Name = (*byte)(unsafe.Pointer(&c.wnames[valid]))
			h.Namelen = nl
			h.Iov = &c.wiov[valid]
			h.Iovlen = 1
			h.Control = nil
			h.Controllen = 0
			h.Flags = 0
			valid++
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
	n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&c.whdrs[c.woff])), uintptr(c.wcount), unix.MSG_DONTWAIT, 0, 0)
	switch errno {
	case 0:
		c.wn = int(n)
		return true
	case unix.EAGAIN, unix.EINTR:
		return false
	default:
		c.werr = errno
		return true
	}
}

// encodeAddr writes a into sa in the socket's family and returns the length.
func (c *Conn) encodeAddr(sa *unix.RawSockaddrInet6, a netip.AddrPort) (uint32, bool) {
	ip := a.Addr()
	if c.v6 {
		sa.Family = unix.AF_INET6
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], a.Port())
		sa.Flowinfo = 0
		sa.Addr = ip.As16()
		sa.Scope_id = 0
		return unix.SizeofSockaddrInet6, ip.IsValid()
	}
	if !ip.Is4() && !ip.Is4In6() {
		return 0, false
	}
	sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
	sa4.Family = unix.AF_INET
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:], a.Port())
	sa4.Addr = ip.Unmap().As4()
	sa4.Zero = [8]uint8{}
	return unix.SizeofSockaddrInet4, true
}

func decodeAddr(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case unix.AF_INET6:
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		ip := netip.AddrFrom16(sa.Addr).Unmap()
		return netip.AddrPortFrom(ip, port)
	}
	return netip.AddrPort{}
}
