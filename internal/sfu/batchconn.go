package sfu

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

// batchConn is the SFU's one UDP socket as pion's UDP mux sees it (a
// net.PacketConn with ice.AddrPortReaderWriter). pion's mux still does the
// demultiplexing (ufrag of the first STUN binding, then source address)
// but the system calls are ours: reads take whatever the socket has queued
// with one recvmmsg, and writes from every peer connection go into one
// bounded queue that a single writer goroutine sends with sendmmsg. On one
// port carrying every flow, packets queue up, so a fan-out of one packet to
// fifty subscribers costs a few system calls instead of fifty.
type batchConn struct {
	c *udpio.Conn

	// The read side belongs to the mux's one reader goroutine.
	rmsgs  []udpio.Message
	rn, ri int

	mu      sync.Mutex // guards pending, spare, closed
	pending []udpio.Message
	spare   []udpio.Message
	closed  bool

	kick chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once

	writes, batches, drops atomic.Uint64
}

// batchQueue is the most packets waiting for the writer; past it packets
// are dropped (and counted): 2048 x 1500 bytes per slab, two slabs.
const batchQueue = 2048

func newBatchConn(c *udpio.Conn) *batchConn {
	b := &batchConn{c: c, rmsgs: udpio.NewMessages(64, 1500),
		pending: udpio.NewMessages(batchQueue, 1500)[:0], spare: udpio.NewMessages(batchQueue, 1500)[:0],
		kick: make(chan struct{}, 1), done: make(chan struct{})}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		b.writeLoop()
	}()
	return b
}

// ReadFromAddrPort returns the next queued datagram, reading a new batch
// when the last one is used up.
func (b *batchConn) ReadFromAddrPort(p []byte) (int, netip.AddrPort, error) {
	for b.ri >= b.rn {
		n, err := b.c.ReadBatch(b.rmsgs)
		if err != nil {
			b.mu.Lock()
			closed := b.closed
			b.mu.Unlock()
			if closed {
				return 0, netip.AddrPort{}, io.EOF
			}
			return 0, netip.AddrPort{}, err
		}
		b.rn, b.ri = n, 0
	}
	m := &b.rmsgs[b.ri]
	b.ri++
	return copy(p, m.Payload()), m.Addr, nil
}

// WriteToAddrPort queues p for the writer. It never blocks; a full queue
// drops the packet (SRTP and ICE recover from loss).
func (b *batchConn) WriteToAddrPort(p []byte, addr netip.AddrPort) (int, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return 0, net.ErrClosed
	}
	n := len(b.pending)
	if n == cap(b.pending) || len(p) > 1500 {
		b.mu.Unlock()
		b.drops.Add(1)
		return len(p), nil
	}
	b.pending = b.pending[:n+1]
	m := &b.pending[n]
	m.N = copy(m.Buf[:cap(m.Buf)], p)
	m.Addr = addr
	b.mu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (b *batchConn) writeLoop() {
	for {
		select {
		case <-b.kick:
		case <-b.done:
			return
		}
		for {
			b.mu.Lock()
			batch := b.pending
			if len(batch) == 0 {
				b.mu.Unlock()
				break
			}
			b.pending, b.spare = b.spare[:0], nil
			b.mu.Unlock()
			_, _ = b.c.WriteBatch(batch) // unreachable destinations are skipped
			b.writes.Add(uint64(len(batch)))
			b.batches.Add(1)
			b.mu.Lock()
			b.spare = batch[:0]
			b.mu.Unlock()
		}
	}
}

// ReadFrom and WriteTo make batchConn a net.PacketConn; pion uses the
// AddrPort forms.
func (b *batchConn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, a, err := b.ReadFromAddrPort(p)
	if err != nil {
		return 0, nil, err
	}
	return n, net.UDPAddrFromAddrPort(a), nil
}

func (b *batchConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, net.InvalidAddrError("not a UDP address")
	}
	return b.WriteToAddrPort(p, ua.AddrPort())
}

// Close closes the socket and stops the writer. It is idempotent.
func (b *batchConn) Close() error {
	b.once.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		close(b.done)
		b.c.Close()
		b.wg.Wait()
	})
	return nil
}

func (b *batchConn) LocalAddr() net.Addr                { return b.c.UDPConn().LocalAddr() }
func (b *batchConn) SetDeadline(t time.Time) error      { return b.c.UDPConn().SetDeadline(t) }
func (b *batchConn) SetReadDeadline(t time.Time) error  { return b.c.UDPConn().SetReadDeadline(t) }
func (b *batchConn) SetWriteDeadline(t time.Time) error { return b.c.UDPConn().SetWriteDeadline(t) }
