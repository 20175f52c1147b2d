//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package udpio

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// RawSender sends UDP datagrams over IPv4 from any source address and
// port, in one sendmmsg(2) per batch, through a raw socket (IP_HDRINCL):
// a UDP socket can only send from its own port, which costs one sendto
// per packet when each packet leaves from a different one. The kernel
// fills in the IP total length, ID and header checksum; the UDP checksum
// is left 0 (allowed in IPv4, RFC 768). Replies arrive on whatever UDP
// sockets are bound to the source ports. It needs CAP_NET_RAW. It is not
// safe for concurrent use.
type RawSender struct {
	fd   int
	m    mmsg
	head [][28]byte
	ok   []bool
	n    int
}

// NewRawSender opens the raw socket, for batches of up to batch datagrams
// (DefaultBatch when <= 0).
func NewRawSender(batch int) (*RawSender, error) {
	if batch <= 0 {
		batch = DefaultBatch
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("udpio: raw socket: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	return &RawSender{fd: fd, m: newMmsg(batch, 2), head: make([][28]byte, batch), ok: make([]bool, batch)}, nil
}

// Add queues payload from src to dst and returns its index in the batch;
// false when the batch is full or an address is not IPv4. payload must
// stay valid until Flush.
func (r *RawSender) Add(payload []byte, src, dst netip.AddrPort) (int, bool) {
	if r.n == len(r.m.hdrs) || !src.Addr().Is4() || !dst.Addr().Is4() || len(payload) > 65507 {
		return 0, false
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
	iov := r.m.iov[2*i : 2*i+2]
	iov[0].Base = &h[0]
	iov[0].SetLen(28)
	iov[1].Base = unsafe.SliceData(payload)
	iov[1].SetLen(len(payload))
	r.m.names[i].Set(netip.AddrPortFrom(dst.Addr(), 0), false)
	m := &r.m.hdrs[i].hdr
	m.Name = (*byte)(unsafe.Pointer(&r.m.names[i].raw))
	m.Namelen = r.m.names[i].n
	m.Iov = &iov[0]
	m.Iovlen = 2
	m.Control, m.Controllen, m.Flags = nil, 0, 0
	r.n++
	return i, true
}

// Len is how many datagrams are queued.
func (r *RawSender) Len() int { return r.n }

// Flush sends what Add queued and returns how many datagrams that was
// and how many of them failed (a full send buffer or an unroutable
// destination: skipped). Sent(i) then tells which went out.
func (r *RawSender) Flush() (n, failed int) {
	n = r.n
	for i := range r.ok[:n] {
		r.ok[i] = false
	}
	for off := 0; off < n; {
		k, errno := sendmmsgNow(uintptr(r.fd), r.m.hdrs[off:n])
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 || k == 0 {
			off++
			failed++
			continue
		}
		for i := off; i < off+k; i++ {
			r.ok[i] = true
		}
		off += k
	}
	r.n = 0
	return n, failed
}

// Sent reports whether datagram i of the last Flush went out.
func (r *RawSender) Sent(i int) bool { return r.ok[i] }

// Close closes the raw socket.
func (r *RawSender) Close() error { return unix.Close(r.fd) }
