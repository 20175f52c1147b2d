// Package batchconn is the SFU's one UDP socket as pion's ICE UDP mux
// sees it (a net.PacketConn with ice.AddrPortReaderWriter), with the
// system calls batched through internal/udpio: reads take whatever the
// socket has queued with one recvmmsg, and writes are corked while a
// packet is fanned out, then leave in one sendmmsg. An Interceptor (the
// SFU's own receive path) sees every batch before the mux does.
package batchconn

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

// Conn is the SFU's one UDP socket as pion's UDP mux sees it (a
// net.PacketConn with ice.AddrPortReaderWriter). pion's mux still does the
// demultiplexing (ufrag of the first STUN binding, then source address)
// but the system calls are ours: reads take whatever the socket has queued
// with one recvmmsg, and writes are "corked" while a publisher's packet is
// fanned out: a track's read loop calls Cork before writing the packet to
// every subscriber and Uncork after, and Uncork sends everything queued
// meanwhile with sendmmsg, in the read loop's own goroutine (no hand-off to
// a writer goroutine). Writes while nothing is corked go straight out with
// one sendto, as without batching. A fan-out of one packet to fifty
// subscribers costs one or two system calls instead of fifty.
type Conn struct {
	c *udpio.Conn

	// The read side belongs to the mux's one reader goroutine.
	rmsgs  []udpio.Message
	rn, ri int
	taken  []bool // rmsgs[i] was taken by the own receive path

	// recv, when set, sees every batch first (SetInterceptor).
	recv atomic.Pointer[Interceptor]

	corked atomic.Int32 // read loops inside a cork/uncork pair

	mu      sync.Mutex // guards pending, closed
	pending []udpio.Message
	closed  bool

	fmu   sync.Mutex // serialises flushes; guards spare
	spare []udpio.Message

	once sync.Once

	writes, batches, drops atomic.Uint64
}

// Interceptor takes datagrams out of a batch before pion's mux reads
// them: the SFU's own receive path, which decrypts and forwards RTP from
// the reader goroutine.
type Interceptor interface {
	// Active reports whether Intercept may take anything now; when it
	// does not, the batch is not corked for it.
	Active() bool
	// Intercept takes m (true: the mux never sees it) or leaves it (false).
	// now is the batch's read time in unix nanoseconds. Its writes are
	// corked: the whole batch's fan-outs leave in one sendmmsg.
	Intercept(m *udpio.Message, now int64) bool
}

// SetInterceptor makes i see every batch read from now on.
func (b *Conn) SetInterceptor(i Interceptor) { b.recv.Store(&i) }

// Stats are a Conn's counters since it was made.
type Stats struct {
	Writes  uint64 // datagrams sent
	Batches uint64 // send system calls they took (sendmmsg batches and single sendto)
	Drops   uint64 // datagrams dropped as larger than 1500 bytes
}

// Stats returns the Conn's counters.
func (b *Conn) Stats() Stats {
	return Stats{Writes: b.writes.Load(), Batches: b.batches.Load(), Drops: b.drops.Load()}
}

// batchQueue is the most packets queued while corked; a write that finds
// the queue full flushes it first: 512 x 1500 bytes per slab, two slabs.
const batchQueue = 512

// New wraps c; the Conn owns it from then on.
func New(c *udpio.Conn) *Conn {
	return &Conn{c: c, rmsgs: udpio.NewMessages(64, 1500), taken: make([]bool, 64),
		pending: udpio.NewMessages(batchQueue, 1500)[:0], spare: udpio.NewMessages(batchQueue, 1500)[:0]}
}

// ReadFromAddrPort returns the next queued datagram, reading a new batch
// when the last one is used up. Datagrams the Interceptor took are
// skipped.
func (b *Conn) ReadFromAddrPort(p []byte) (int, netip.AddrPort, error) {
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
				b.intercept(*r)
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

// intercept lets r take what it forwards from the batch just read,
// corked: all the batch's fan-outs leave in one sendmmsg.
func (b *Conn) intercept(r Interceptor) {
	now := time.Now().UnixNano()
	corked := false
	for i := range b.rn {
		b.taken[i] = false
		if !r.Active() {
			continue
		}
		if !corked {
			b.Cork()
			corked = true
		}
		b.taken[i] = r.Intercept(&b.rmsgs[i], now)
	}
	if corked {
		b.Uncork()
	}
}

// Cork makes writes queue until the matching Uncork. Corks nest: several
// goroutines may fan out at once.
func (b *Conn) Cork() { b.corked.Add(1) }

// Uncork ends a Cork and sends what is queued.
func (b *Conn) Uncork() {
	b.corked.Add(-1)
	b.flush()
}

// WriteToAddrPort sends p now when no read loop is corked, else queues it
// for the uncork. It never blocks on a writer.
func (b *Conn) WriteToAddrPort(p []byte, addr netip.AddrPort) (int, error) {
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

// Filler writes one datagram into a buffer of the batched socket: Fill
// returns its length, or false to drop it.
type Filler interface {
	Fill(buf []byte) (int, bool)
}

// WriteFilled sends the datagram f writes, as WriteToAddrPort would; while
// corked f writes it straight into the queue (no copy: the SFU's own data
// path encrypts into it), else into own, which is sent at once. f runs
// with the Conn's lock held: it must not call the Conn. false: f dropped
// it, or the socket is closed (err).
func (b *Conn) WriteFilled(f Filler, own []byte, addr netip.AddrPort) (int, bool, error) {
	for {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return 0, false, net.ErrClosed
		}
		n := len(b.pending)
		if n == 0 && b.corked.Load() == 0 {
			b.mu.Unlock()
			k, ok := f.Fill(own)
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
		k, ok := f.Fill(m.Buf[:cap(m.Buf)])
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

// Discard drops what is queued while corked, unsent, and returns how many
// datagrams that was: benchmarks of the writers measure everything but the
// sendmmsg with it.
func (b *Conn) Discard() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(b.pending)
	b.pending = b.pending[:0]
	return n
}

// flush sends everything queued with sendmmsg.
func (b *Conn) flush() {
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

// ReadFrom makes Conn a net.PacketConn; pion uses ReadFromAddrPort.
func (b *Conn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, a, err := b.ReadFromAddrPort(p)
	if err != nil {
		return 0, nil, err
	}
	return n, net.UDPAddrFromAddrPort(a), nil
}

// WriteTo makes Conn a net.PacketConn; pion uses WriteToAddrPort.
func (b *Conn) WriteTo(p []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, net.InvalidAddrError("not a UDP address")
	}
	return b.WriteToAddrPort(p, ua.AddrPort())
}

// Close closes the socket. It is idempotent.
func (b *Conn) Close() error {
	b.once.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		b.c.Close()
	})
	return nil
}

// LocalAddr and the deadlines are the socket's.
func (b *Conn) LocalAddr() net.Addr                { return b.c.UDPConn().LocalAddr() }
func (b *Conn) SetDeadline(t time.Time) error      { return b.c.UDPConn().SetDeadline(t) }
func (b *Conn) SetReadDeadline(t time.Time) error  { return b.c.UDPConn().SetReadDeadline(t) }
func (b *Conn) SetWriteDeadline(t time.Time) error { return b.c.UDPConn().SetWriteDeadline(t) }
