//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package udpio

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SockError is one entry of a socket's error queue (IP_RECVERR,
// ip(7)): a datagram the socket sent that the network refused.
type SockError struct {
	// Dst is the destination of the datagram that caused the error.
	Dst netip.AddrPort
	// Errno is the error (ECONNREFUSED for an ICMP port unreachable).
	Errno unix.Errno
	// ICMP reports that an ICMP or ICMPv6 message caused it; Type and
	// Code are then that message's.
	ICMP       bool
	Type, Code uint8
}

// PortUnreachable reports an ICMP port unreachable (ICMP type 3 code 3,
// ICMPv6 type 1 code 4): nothing listens at Dst.
func (e SockError) PortUnreachable() bool {
	return e.ICMP && e.Errno == unix.ECONNREFUSED
}

// errQueue is the state RecvErr reuses between calls.
type errQueue struct {
	name Sockaddr
	iov  unix.Iovec
	hdr  unix.Msghdr
	data [1]byte
	oob  [128]byte
}

// RecvErr takes one entry off fd's error queue (a socket opened with
// FDOptions.RecvErr) without blocking; ok is false when the queue is
// empty. A loop that sees a readable event with nothing to read drains
// the queue with it: level-triggered epoll reports the socket again as
// long as the queue is not empty.
func (b *Batch) RecvErr(fd int) (e SockError, ok bool) {
	q := &b.eq
	q.iov.Base = &q.data[0]
	q.iov.SetLen(len(q.data))
	q.hdr.Name = (*byte)(unsafe.Pointer(&q.name.raw))
	q.hdr.Namelen = unix.SizeofSockaddrInet6
	q.hdr.Iov = &q.iov
	q.hdr.Iovlen = 1
	q.hdr.Control = &q.oob[0]
	q.hdr.SetControllen(len(q.oob))
	q.hdr.Flags = 0
	_, _, errno := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&q.hdr)), unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
	if errno != 0 {
		return SockError{}, false
	}
	e.Dst = q.name.AddrPort()
	oob := q.oob[:q.hdr.Controllen]
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		if h.Len < unix.SizeofCmsghdr || int(h.Len) > len(oob) {
			break
		}
		body := oob[unix.SizeofCmsghdr:h.Len]
		if ((h.Level == unix.IPPROTO_IP && h.Type == unix.IP_RECVERR) ||
			(h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_RECVERR)) && len(body) >= int(unsafe.Sizeof(unix.SockExtendedErr{})) {
			ee := (*unix.SockExtendedErr)(unsafe.Pointer(&body[0]))
			e.Errno = unix.Errno(ee.Errno)
			e.ICMP = ee.Origin == unix.SO_EE_ORIGIN_ICMP || ee.Origin == unix.SO_EE_ORIGIN_ICMP6
			e.Type, e.Code = ee.Type, ee.Code
		}
		oob = oob[cmsgAlign(int(h.Len)):]
	}
	return e, true
}

func cmsgAlign(n int) int { return (n + unix.SizeofPtr - 1) &^ (unix.SizeofPtr - 1) }
