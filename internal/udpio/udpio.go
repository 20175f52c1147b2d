// Package udpio is traverse's one system-call layer for datagram sockets:
// the batched socket every data path shares (the STUN and TURN servers,
// the SFU's single media port, the SIP media proxy and the cascade relay
// port), and below it the pieces an event loop over many sockets needs.
// No other package calls recvmmsg, sendmmsg, epoll or converts socket
// addresses (TestSyscallLayer fails when one does).
//
//   - Conn: one socket in Go's netpoller, read with recvmmsg(2) and written
//     with sendmmsg(2), taking whatever the socket has queued (one packet
//     or many) in one system call. Elsewhere than Linux it falls back to
//     one packet per system call.
//   - Set: many raw non-blocking sockets (OpenFD) in one epoll set, served
//     by one loop: Wait, Park or Poll for the ready ones, Batch.Recv to
//     drain each, Batch.Send to flush what the loop gathered, one
//     sendmmsg per socket; SendTo for a single datagram.
//   - RawSender: UDP over IPv4 from any source port, one sendmmsg per
//     batch through a raw socket.
//   - Sockaddr: the one codec between netip.AddrPort and the kernel's
//     struct sockaddr, encoded once per destination.
//
// Nothing allocates per packet: messages carry their addresses as
// netip.AddrPort values and the kernel's socket addresses live in buffers
// owned by the Conn, Batch or RawSender.
//
// A Conn may be read by one goroutine and written by another at the same
// time; ReadBatch and WriteBatch are each not safe for concurrent use with
// themselves. WriteTo is safe for concurrent use. A Set is changed from
// any goroutine and waited on by one; a Batch or RawSender belongs to one
// goroutine.
package udpio

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
)

// DefaultBatch is the number of messages moved per system call when Options
// does not say.
const DefaultBatch = 64

// MaxCoalesced is the largest read a Conn with Options.Coalesce can make
// of coalesced datagrams (and the most bytes it sends as one run): read
// buffers of this size lose nothing; a smaller one truncates a coalesced
// read (its last datagrams are cut or lost).
const MaxCoalesced = 65535 - 40 - 8

// MaxPacket is the buffer size that holds any UDP payload on an Ethernet-size
// path with room to spare; NewMessages uses it by default.
const MaxPacket = 2048

// ErrAddrFamily is returned for a destination the socket's address family
// cannot reach (an IPv6 destination on an IPv4 socket).
var ErrAddrFamily = errors.New("udpio: destination address family does not match the socket")

// Message is one datagram. On read, Buf's capacity is filled, N says how
// many bytes arrived and Addr where from. On write, Buf[:N] goes to Addr.
//
// On a Conn with Options.Coalesce a read may hold several datagrams of
// one source back to back (UDP GRO): Seg is then the size of each (the
// last may be shorter), and Datagram walks them. Seg is 0 when the read
// holds one datagram, and is not used on write.
type Message struct {
	Buf  []byte
	N    int
	Addr netip.AddrPort
	Seg  int
}

// Payload returns the datagram's bytes (all of a coalesced read's).
func (m *Message) Payload() []byte { return m.Buf[:m.N] }

// Datagram returns the datagram at byte offset off of a read (the whole
// payload when Seg is 0) and the offset of the next one; b is empty at
// the end. Walk a read with
//
//	for b, off := m.Datagram(0); len(b) > 0; b, off = m.Datagram(off) { ... }
func (m *Message) Datagram(off int) (b []byte, next int) {
	if off >= m.N {
		return nil, m.N
	}
	next = m.N
	if m.Seg > 0 {
		next = min(off+m.Seg, m.N)
	}
	return m.Buf[off:next], next
}

// NewMessages returns n messages whose buffers of size bytes (MaxPacket when
// size is 0) share one allocation.
func NewMessages(n, size int) []Message {
	if size <= 0 {
		size = MaxPacket
	}
	slab := make([]byte, n*size)
	msgs := make([]Message, n)
	for i := range msgs {
		msgs[i].Buf = slab[i*size : (i+1)*size : (i+1)*size]
	}
	return msgs
}

// Options tune a socket. The zero value is usable.
type Options struct {
	// ReusePort sets SO_REUSEPORT so that several sockets, each with its
	// own reader, share one port and the kernel spreads flows over them.
	ReusePort bool
	// ReadBuffer and WriteBuffer set SO_RCVBUF and SO_SNDBUF in bytes; 0
	// keeps the system default. A larger receive buffer absorbs bursts on
	// a busy shared port at the cost of kernel memory.
	ReadBuffer, WriteBuffer int
	// Batch is the most messages one system call moves (DefaultBatch when
	// 0). It sizes the Conn's internal header arrays.
	Batch int
	// Coalesce turns on UDP GSO and GRO (Linux; elsewhere, or where the
	// kernel refuses them, nothing changes and Conn.Coalescing says so).
	// WriteBatch sends the messages to one address as runs of equal-size
	// datagrams (the last of a run may be shorter), each run in one
	// message header with UDP_SEGMENT, so the kernel walks its stack once
	// per run; the order of the datagrams to one address is kept, the
	// order between addresses is not. ReadBatch returns datagrams of one
	// source the kernel coalesced as one Message with Seg set: read
	// buffers must then be MaxCoalesced bytes.
	Coalesce bool
}

// Listen opens a UDP socket on addr ("host:port"; network "udp", "udp4" or
// "udp6").
func Listen(ctx context.Context, network, addr string, o Options) (*Conn, error) {
	lc := net.ListenConfig{}
	if o.ReusePort {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = setReusePort(fd) }); err != nil {
				return err
			}
			return serr
		}
	}
	pc, err := lc.ListenPacket(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("udpio: listen %s: %w", addr, err)
	}
	uc := pc.(*net.UDPConn)
	if o.ReadBuffer > 0 {
		_ = uc.SetReadBuffer(o.ReadBuffer)
	}
	if o.WriteBuffer > 0 {
		_ = uc.SetWriteBuffer(o.WriteBuffer)
	}
	c, err := New(uc, o.Batch)
	if err != nil {
		uc.Close()
		return nil, err
	}
	if o.Coalesce {
		c.enableCoalesce()
	}
	return c, nil
}

// ListenGroup opens n sockets on the same address with SO_REUSEPORT. When
// addr's port is 0 the first socket picks the port and the others join it.
func ListenGroup(ctx context.Context, network, addr string, n int, o Options) ([]*Conn, error) {
	if n < 1 {
		n = 1
	}
	o.ReusePort = true
	conns := make([]*Conn, 0, n)
	for i := 0; i < n; i++ {
		c, err := Listen(ctx, network, addr, o)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, err
		}
		conns = append(conns, c)
		addr = c.LocalAddr().String()
	}
	return conns, nil
}

// UDPConn returns the underlying socket, for code that reads or writes one
// packet at a time.
func (c *Conn) UDPConn() *net.UDPConn { return c.uc }

// LocalAddr returns the bound address.
func (c *Conn) LocalAddr() netip.AddrPort { return c.uc.LocalAddr().(*net.UDPAddr).AddrPort() }

// WriteTo sends one datagram. It is safe for concurrent use.
func (c *Conn) WriteTo(b []byte, addr netip.AddrPort) error {
	_, err := c.uc.WriteToUDPAddrPort(b, c.fixAddr(addr))
	return err
}

// ReadFrom reads one datagram.
func (c *Conn) ReadFrom(b []byte) (int, netip.AddrPort, error) {
	n, a, err := c.uc.ReadFromUDPAddrPort(b)
	return n, unmap(a), err
}

// Close closes the socket; blocked reads return net.ErrClosed. It is
// idempotent.
func (c *Conn) Close() error {
	err := c.uc.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func (c *Conn) fixAddr(a netip.AddrPort) netip.AddrPort {
	if c.v6 && a.Addr().Is4() {
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr().As16()), a.Port())
	}
	return a
}

func unmap(a netip.AddrPort) netip.AddrPort {
	if a.Addr().Is4In6() {
		return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	}
	return a
}
