//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package udpio

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Sockaddr is a socket address in the kernel's binary form, encoded once
// and handed to sendto(2) or sendmmsg(2) as it is. It is the only
// converter between netip.AddrPort and struct sockaddr in traverse.
type Sockaddr struct {
	raw unix.RawSockaddrInet6 // or a RawSockaddrInet4 in its first bytes
	n   uint32
}

// Set encodes ap for a socket of family AF_INET6 (v6) or AF_INET; it
// returns false when that family cannot reach ap (an IPv6 address on an
// IPv4 socket, or no address at all). IPv4 addresses go to an IPv6 socket
// as IPv4-mapped addresses.
func (sa *Sockaddr) Set(ap netip.AddrPort, v6 bool) bool {
	a := ap.Addr()
	if !a.IsValid() {
		return false
	}
	if v6 {
		sa.raw.Family = unix.AF_INET6
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.raw.Port))[:], ap.Port())
		sa.raw.Flowinfo = 0
		sa.raw.Addr = a.As16()
		sa.raw.Scope_id = 0
		sa.n = unix.SizeofSockaddrInet6
		return true
	}
	a = a.Unmap()
	if !a.Is4() {
		return false
	}
	p := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa.raw))
	p.Family = unix.AF_INET
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&p.Port))[:], ap.Port())
	p.Addr = a.As4()
	p.Zero = [8]uint8{}
	sa.n = unix.SizeofSockaddrInet4
	return true
}

// AddrPort decodes the address; IPv4-mapped IPv6 addresses come out as
// IPv4. An address of another family decodes as the zero AddrPort.
func (sa *Sockaddr) AddrPort() netip.AddrPort {
	switch sa.raw.Family {
	case unix.AF_INET:
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa.raw))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&p.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(p.Addr), port)
	case unix.AF_INET6:
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.raw.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom16(sa.raw.Addr).Unmap(), port)
	}
	return netip.AddrPort{}
}

// ptr returns the address for a system call, with its length.
func (sa *Sockaddr) ptr() (unsafe.Pointer, uint32) { return unsafe.Pointer(&sa.raw), sa.n }

// toSockaddr converts ap for the socket calls that take x/sys's form
// (bind).
func toSockaddr(ap netip.AddrPort, v6 bool) unix.Sockaddr {
	if v6 {
		return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}
}

// fromSockaddr converts x/sys's form back (getsockname).
func fromSockaddr(sa unix.Sockaddr) netip.AddrPort {
	switch g := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(g.Addr), uint16(g.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(g.Addr).Unmap(), uint16(g.Port))
	}
	return netip.AddrPort{}
}

// ErrUnsupported is returned by the descriptor-level calls on platforms
// where they are not implemented; never on this one.
var ErrUnsupported = errors.New("udpio: not supported on this platform")
