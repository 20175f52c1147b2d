//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package udpio

import (
	"errors"
	"fmt"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrAddrInUse is returned by OpenFD when the address is taken.
var ErrAddrInUse error = unix.EADDRINUSE

// FDOptions tune a socket opened by OpenFD.
type FDOptions struct {
	// V6 opens an AF_INET6 socket (else AF_INET).
	V6 bool
	// V6Only sets IPV6_V6ONLY on an AF_INET6 socket.
	V6Only bool
	// ReusePort sets SO_REUSEPORT.
	ReusePort bool
	// ReadBuffer and WriteBuffer set SO_RCVBUF and SO_SNDBUF in bytes; 0
	// keeps the system default.
	ReadBuffer, WriteBuffer int
	// RecvErr sets IP_RECVERR (and IPV6_RECVERR on an AF_INET6 socket):
	// ICMP errors about datagrams the socket sent (port unreachable) are
	// queued for Batch.RecvErr. Without it Linux drops them for an
	// unconnected socket.
	RecvErr bool
}

// OpenFD opens a non-blocking UDP socket bound to ap and returns its
// descriptor, for a Set, with the address it got (the port the kernel
// chose when ap's port is 0). The caller closes it with CloseFD.
func OpenFD(ap netip.AddrPort, o FDOptions) (int, netip.AddrPort, error) {
	fam := unix.AF_INET
	if o.V6 {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, netip.AddrPort{}, fmt.Errorf("udpio: socket: %w", err)
	}
	if o.V6 && o.V6Only {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	}
	if o.ReusePort {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}
	if o.ReadBuffer > 0 {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, o.ReadBuffer)
	}
	if o.WriteBuffer > 0 {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, o.WriteBuffer)
	}
	if o.RecvErr {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1)
		if o.V6 {
			_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1)
		}
	}
	if !o.V6 && !ap.Addr().Unmap().Is4() {
		unix.Close(fd)
		return -1, netip.AddrPort{}, fmt.Errorf("udpio: bind %s: %w", ap, ErrAddrFamily)
	}
	if err := unix.Bind(fd, toSockaddr(ap, o.V6)); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EADDRINUSE) {
			return -1, netip.AddrPort{}, fmt.Errorf("udpio: bind %s: %w", ap, ErrAddrInUse)
		}
		return -1, netip.AddrPort{}, fmt.Errorf("udpio: bind %s: %w", ap, err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, netip.AddrPort{}, fmt.Errorf("udpio: getsockname: %w", err)
	}
	return fd, fromSockaddr(got), nil
}

// CloseFD closes a descriptor from OpenFD (after Set.Remove).
func CloseFD(fd int) error { return unix.Close(fd) }

// SendTo sends b from socket fd to sa with one sendto(2), without
// blocking or allocating. A full socket buffer drops the datagram
// (EAGAIN), as a UDP relay should.
func SendTo(fd int, b []byte, sa *Sockaddr) error {
	p, n := sa.ptr()
	_, _, errno := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)),
		unix.MSG_DONTWAIT, uintptr(p), uintptr(n))
	if errno != 0 {
		return errno
	}
	return nil
}
