//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package mediaproxy

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawSender sends the packets going inside, each from its own stream's
// inside port, in one sendmmsg per batch through a raw IPv4 socket
// (IP_HDRINCL): a UDP socket can only send from its own port, which costs
// one sendto per packet. The kernel fills in the IP total length, ID and
// header checksum; the UDP checksum is left 0 (allowed in IPv4, RFC 768).
// Replies still arrive on the streams' bound inside UDP sockets. It needs
// CAP_NET_RAW; without it the proxy sends with sendto.
type rawSender struct {
	fd    int
	hdrs  []mmsghdr
	iov   []unix.Iovec
	names []unix.RawSockaddrInet4
	head  [][28]byte
	out   []*stream
	sizes []int
	n     int
}

// mmsghdr is struct mmsghdr on 64-bit Linux.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

func newRawSender(batch int) (*rawSender, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	return &rawSender{
		fd: fd, hdrs: make([]mmsghdr, batch), iov: make([]unix.Iovec, 2*batch),
		names: make([]unix.RawSockaddrInet4, batch), head: make([][28]byte, batch),
		out: make([]*stream, batch), sizes: make([]int, batch),
	}, nil
}

// add queues payload from src to dst for s; false when the batch is full
// or the addresses are not IPv4. payload must stay valid until flush.
func (r *rawSender) add(s *stream, payload []byte, src, dst netip.AddrPort) bool {
	if r.n == len(r.hdrs) || !src.Addr().Is4() || !dst.Addr().Is4() || len(payload) > 65507 {
		return false
	}
	i := r.n
	h := &r.head[i]
	h[0], h[1] = 0x45, 0
	binary.BigEndian.PutUint16(h[2:], 0) // total length: the kernel fills it in
	binary.BigEndian.PutUint32(h[4:], 0x00004000)
	h[8], h[9] = 64, unix.IPPROTO_UDP
	h[10], h[11] = 0, 0
	sa, da := src.Addr().As4(), dst.Addr().As4()
	copy(h[12:16], sa[:])
	copy(h[16:20], da[:])
	binary.BigEndian.PutUint16(h[20:], src.Port())
	binary.BigEndian.PutUint16(h[22:], dst.Port())
	binary.BigEndian.PutUint16(h[24:], uint16(8+len(payload)))
	h[26], h[27] = 0, 0
	r.iov[2*i].Base = &h[0]
	r.iov[2*i].SetLen(28)
	r.iov[2*i+1].Base = unsafe.SliceData(payload)
	r.iov[2*i+1].SetLen(len(payload))
	nm := &r.names[i]
	nm.Family = unix.AF_INET
	nm.Addr = da
	m := &r.hdrs[i].hdr
	m.Name = (*byte)(unsafe.Pointer(nm))
	m.Namelen = unix.SizeofSockaddrInet4
	m.Iov = &r.iov[2*i]
	m.Iovlen = 2
	m.Control, m.Controllen, m.Flags = nil, 0, 0
	r.out[i], r.sizes[i] = s, len(payload)
	r.n++
	return true
}

// flush sends what add queued and calls done for each packet sent; it
// returns how many could not be sent.
func (r *rawSender) flush(done func(s *stream, n int)) (failed int) {
	off := 0
	for off < r.n {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(r.fd), uintptr(unsafe.Pointer(&r.hdrs[off])), uintptr(r.n-off), 0, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 || n == 0 {
			// Skip the packet that failed (EAGAIN: the send buffer is
			// full; others: an unroutable destination) and go on.
			off++
			failed++
			continue
		}
		for i := off; i < off+int(n); i++ {
			done(r.out[i], r.sizes[i])
		}
		off += int(n)
	}
	for i := 0; i < r.n; i++ {
		r.out[i] = nil
	}
	r.n = 0
	return failed
}

func (r *rawSender) close() { unix.Close(r.fd) }
