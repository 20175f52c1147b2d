package sfu

import (
	"errors"
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
// with one recvmmsg, and writes are "corked" while a publisher's packet is
// fanned out: a track's read loop calls cork before writing the packet to
// every subscriber and uncork after, and uncork sends everything queued
// meanwhile with sendmmsg, in the read loop's own goroutine (no hand-off to
// a writer goroutine). Writes while nothing is corked go straight out with
// one sendto, as without batching. A fan-out of one packet to fifty
// subscribers costs one or two system calls instead of fifty.
type batchConn struct {
	c *udpio.Conn

	// The read side belongs to the mux's one reader goroutine.
	rmsgs  []udpio.Message
	rn, ri int
	taken  []bool // rmsgs[i] was taken by the own receive path

	// recv, when set, is the own receive path (recvpath.go): it sees
	// every batch first.
	recv atomic.Pointer[recvPath]

	corked atomic.Int32 // read loops inside a cork/uncork pair

	mu      sync.Mutex // guards pending, closed
	pending []udpio.Message
	closed  bool

	fmu   sync.Mutex // serialises flushes; guards spare
	spare []udpio.Message

	once sync.Once

	writes, batches, drops atomic.Uint64
}

// batchQueue is the most packets queued while corked; a write that finds
// the queue full flushes it first: 512 x 1500 bytes per slab, two slabs.
const batchQueue = 512

func newBatchConn(c *udpio.Conn) *batchConn {
	return &batchConn{c: c, rmsgs: udpio.NewMessages(64, 1500), taken: make([]bool, 64),
		pending: udpio.NewMessages(batchQueue, 1500)[:0], spare: udpio.NewMessages(batchQueue, 1500)[:0]}
}

// ReadFromAddrPort returns the next queued datagram, reading a new batch
// when the last one is used up. Datagrams the own receive path took are
// skipped.
func (b *batchConn) ReadFromAddrPort(p []byte) (int, netip.AddrPort, error) {
	for {
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
			if r := b.recv.Load(); r != nil {
				b.intercept(r)
			}
		}
		i := b.ri
		b.ri++
		if b.taken[i] {
			continue
		}
		m := &b.rmsgs[i]
		return copy(p, m.Payload()), m.Addr, nil
	}
}

// intercept lets the own receive path take what it forwards from the
// batch just read, corked: all the batch's fan-outs leave in one sendmmsg.
func (b *batchConn) intercept(r *recvPath) {
	now := time.Now().UnixNano()
	corked := false
	for i := range b.rn {
		b.taken[i] = false
		if len(*r.table.Load()) == 0 {
			continue
		}
		if !corked {
			b.cork()
			corked = true
		}
		b.taken[i] = r.intercept(&b.rmsgs[i], now)
	}
	if corked {
		b.uncork()
	}
}

// cork makes writes queue until the matching uncork.
func (b *batchConn) cork() { b.corked.Add(1) }

// uncork ends a cork and sends what is queued.
func (b *batchConn) uncork() {
	b.corked.Add(-1)
	b.flush()
}

// WriteToAddrPort sends p now when no read loop is corked, else queues it
// for the uncork. It never blocks on a writer.
func (b *batchConn) WriteToAddrPort(p []byte, addr netip.AddrPort) (int, error) {
	if len(p) > 1500 {
		b.drops.Add(1)
		return len(p), nil
	}
	for {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return 0, net.ErrClosed
		}
		n := len(b.pending)
		if n == 0 && b.corked.Load() == 0 {
			b.mu.Unlock()
			if err := b.c.WriteTo(p, addr); err != nil && errors.Is(err, net.ErrClosed) {
				return 0, err
			}
			b.writes.Add(1)
			b.batches.Add(1)
			return len(p), nil
		}
		if n == cap(b.pending) {
			b.mu.Unlock()
			b.flush()
			continue
		}
		b.pending = b.pending[:n+1]
		m := &b.pending[n]
		m.N = copy(m.Buf[:cap(m.Buf)], p)
		m.Addr = addr
		b.mu.Unlock()
		break
	}
	// An uncork that ran between the check above and the queueing did not
	// see this packet: whoever finds nothing corked sends it.
	if b.corked.Load() == 0 {
		b.flush()
	}
	return len(p), nil
}

// datagramFiller writes one datagram into a buffer of the batched
// socket: fill returns its length, or false to drop it.
type datagramFiller interface {
	fill(buf []byte) (int, bool)
}

// writeFilled sends the datagram f writes, as WriteToAddrPort would; while
// corked f writes it straight into the queue (no copy: the own data path
// encrypts into it), else into own, which is sent at once. f runs with
// b.mu held: it must not call b. false: f dropped it, or the socket is
// closed (err).
func (b *batchConn) writeFilled(f datagramFiller, own []byte, addr netip.AddrPort) (int, bool, error) {
	for {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return 0, false, net.ErrClosed
		}
		n := len(b.pending)
		if n == 0 && b.corked.Load() == 0 {
			b.mu.Unlock()
			k, ok := f.fill(own)
			if !ok {
				return 0, false, nil
			}
			if err := b.c.WriteTo(own[:k], addr); err != nil && errors.Is(err, net.ErrClosed) {
				return 0, false, err
			}
			b.writes.Add(1)
			b.batches.Add(1)
			return k, true, nil
		}
		if n == cap(b.pending) {
			b.mu.Unlock()
			b.flush()
			continue
		}
		m := &b.pending[n : n+1][0]
		k, ok := f.fill(m.Buf[:cap(m.Buf)])
		if !ok {
			b.mu.Unlock()
			return 0, false, nil
		}
		m.N, m.Addr = k, addr
		b.pending = b.pending[:n+1]
		b.mu.Unlock()
		// As in WriteToAddrPort: an uncork that ran meanwhile did not
		// see this datagram.
		if b.corked.Load() == 0 {
			b.flush()
		}
		return k, true, nil
	}
}

// flush sends everything queued with sendmmsg.
func (b *batchConn) flush() {
	b.fmu.Lock()
	defer b.fmu.Unlock()
	b.mu.Lock()
	batch := b.pending
	if len(batch) == 0 {
		b.mu.Unlock()
		return
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

// Close closes the socket. It is idempotent.
func (b *batchConn) Close() error {
	b.once.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		b.c.Close()
	})
	return nil
}

func (b *batchConn) LocalAddr() net.Addr                { return b.c.UDPConn().LocalAddr() }
func (b *batchConn) SetDeadline(t time.Time) error      { return b.c.UDPConn().SetDeadline(t) }
func (b *batchConn) SetReadDeadline(t time.Time) error  { return b.c.UDPConn().SetReadDeadline(t) }
func (b *batchConn) SetWriteDeadline(t time.Time) error { return b.c.UDPConn().SetWriteDeadline(t) }

// corkable returns the batched writer a fan-out corks: the own data path's
// (which is the batched socket when both are on), else the batched socket,
// else nil.
func (s *Server) corkable() *batchConn {
	if s.out != nil {
		return s.out
	}
	return s.batch
}
