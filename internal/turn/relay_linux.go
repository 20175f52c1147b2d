//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package turn

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

// engine is one event loop: a UDP listener socket and the relay sockets of
// the allocations made through it, in one udpio.Set, served by one
// goroutine, much as coturn's relay threads are (the goroutine is not
// locked to its thread; it yields to the scheduler every few ms). It
// blocks in epoll_wait itself (Set.Wait): parking in Go's netpoller
// instead would add a second epoll_wait and a scheduler hand-off to every
// wake-up, which at RTP packet rates (one packet per wake-up) is most of
// the cost; only an idle loop parks (Set.Park, after parkAfter).
type engine struct {
	s     *Server
	shard int
	lfd   int // listener socket
	laddr netip.AddrPort
	lv6   bool // listener is AF_INET6
	set   *udpio.Set
	v6    bool // relay sockets are AF_INET6
	once  sync.Once

	smu     sync.Mutex            // guards streams
	streams map[int32]*streamConn // TCP clients served by this loop, by socket
	sbuf    []byte                // the loop's read buffer for them

	// Loop state, owned by run.
	in   []udpio.Message  // the round's slots: datagrams read, by slot
	bufs [][]byte         // each slot's buffer, with headroom for framing
	rb   *udpio.Batch     // reads
	wb   *udpio.Batch     // sends to the clients
	raw  *udpio.RawSender // sends to IPv4 peers (nil: sendto)
	rawN []int            // the payload size of each datagram queued on raw
	out  []udpio.Message
	tid  [12]byte
	ctr  uint64
	up   relayStats
	down downStats
}

const (
	engineBatch = 64
	bufSize     = headroom + udpio.MaxPacket + 4
)

// parkAfter is how long an event loop goes without any event before it
// parks in Go's netpoller (Set.Park) instead of waking every 5 ms. Under
// traffic the loop keeps its raw epoll_wait (parking per wake-up measured
// far worse, see run); an idle loop, and a loop whose data path the
// kernel carries (--offload ebpf), then costs nothing: about 1 % of a CPU
// before (200 wake-ups a second, each with its pass through the
// scheduler).
const parkAfter = int64(200 * time.Millisecond)

// newEngine opens the listener socket (joining port when non-zero) and the
// socket set.
func newEngine(s *Server, shard int, listen netip.AddrPort, reusePort bool) (*engine, error) {
	e := &engine{s: s, shard: shard, lfd: -1, v6: s.cfg.RelayIP.Is6(), streams: map[int32]*streamConn{}}
	fail := func(err error) (*engine, error) { e.close(); return nil, err }
	la := listen.Addr()
	e.lv6 = la.Is6() && !la.Is4In6()
	fd, local, err := udpio.OpenFD(listen, udpio.FDOptions{V6: e.lv6, ReusePort: reusePort, ReadBuffer: 4 << 20, WriteBuffer: 4 << 20})
	if err != nil {
		return fail(fmt.Errorf("turn: listen udp %s: %w", listen, err))
	}
	e.lfd, e.laddr = fd, local
	if e.set, err = udpio.NewSet(128); err != nil {
		return fail(fmt.Errorf("turn: %w", err))
	}
	if err := e.set.Add(e.lfd, 0); err != nil {
		return fail(fmt.Errorf("turn: %w", err))
	}
	e.in = make([]udpio.Message, engineBatch)
	e.bufs = make([][]byte, engineBatch)
	e.rb = udpio.NewBatch(engineBatch)
	e.wb = udpio.NewBatch(engineBatch)
	e.out = make([]udpio.Message, 0, engineBatch)
	e.sbuf = make([]byte, streamReadBuf)
	if !s.cfg.NoRawSend && s.cfg.RelayIP.Is4() {
		if e.raw, err = udpio.NewRawSender(engineBatch); err != nil {
			s.cfg.Log.Debug("turn: ChannelData to peers goes out with one sendto per packet", "raw socket", err)
			e.raw = nil
		} else {
			e.rawN = make([]int, engineBatch)
		}
	}
	slab := make([]byte, engineBatch*bufSize)
	for i := range e.bufs {
		e.bufs[i] = slab[i*bufSize : (i+1)*bufSize : (i+1)*bufSize]
	}
	_, _ = cryptoRead(e.tid[:4])
	return e, nil
}

// open binds a non-blocking relay socket to ap.
func (e *engine) open(ap netip.AddrPort) (int, error) {
	fd, _, err := udpio.OpenFD(ap, udpio.FDOptions{V6: e.v6, V6Only: e.v6})
	if err != nil {
		return -1, fmt.Errorf("turn: %w", err)
	}
	return fd, nil
}

var errAddrInUse = udpio.ErrAddrInUse

func (e *engine) add(fd int) error { return e.set.Add(fd, 0) }

// remove takes relay socket fd out of the set and closes it.
func (e *engine) remove(fd int) {
	e.set.Remove(fd)
	_ = udpio.CloseFD(fd)
}

// WriteTo sends one datagram from the listener socket (control-path
// answers). Safe for concurrent use: one sendto per datagram.
func (e *engine) WriteTo(b []byte, addr netip.AddrPort) error {
	var sa udpio.Sockaddr
	if !sa.Set(addr, e.lv6) {
		return ErrUnsupported
	}
	return udpio.SendTo(e.lfd, b, &sa)
}

// wake makes run return.
func (e *engine) wake() {
	if e.set != nil {
		e.set.Stop()
	}
}

// close releases the listener and the set (after run returned).
func (e *engine) close() {
	e.once.Do(func() {
		if e.set != nil {
			e.set.Close()
		}
		if e.lfd >= 0 {
			_ = udpio.CloseFD(e.lfd)
		}
		if e.raw != nil {
			_ = e.raw.Close()
		}
	})
}

// yieldEvery is how often the event loop passes through the scheduler (see
// run). Measured on 2 vCPUs at RTP rates: every 2 ms cost less CPU per
// relayed packet than never (sysmon preempting) or every 8 ms.
const yieldEvery = int64(2 * time.Millisecond)

// run serves the listener and the relay sockets until wake.
func (e *engine) run() {
	s := e.s
	var before, yielded int64
	active := time.Now().UnixNano() // the last round with an event
	for {
		evs, err := e.set.Wait(5)
		if e.set.Stopped() {
			return
		}
		if err != nil {
			s.cfg.Log.Error("turn: epoll_wait", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		now := time.Now().UnixNano()
		if len(evs) == 0 {
			udpio.Yield()
			yielded = now
			if now-active < parkAfter {
				continue
			}
			// Idle: park until there is work.
			if evs = e.set.Park(); len(evs) == 0 || e.set.Stopped() {
				continue
			}
			now = time.Now().UnixNano()
		}
		active = now
		used := 0
		for _, ev := range evs {
			fd := ev.FD()
			switch {
			case ev.Tag() == streamTag:
				e.fromStream(fd, ev)
			case fd == e.lfd:
				used = e.fromClients(used)
			default:
				used = e.fromPeers(fd, used, now)
			}
		}
		e.flush()
		// Coalesce wake-ups under load: when this round's epoll_wait waited
		// less than the coalescing interval, traffic is dense, so wait
		// that long before the next epoll_wait and let one wake-up and
		// one batch serve every packet that arrives meanwhile. The first
		// packet after a quiet spell is not delayed.
		if c := s.cfg.Coalesce; c > 0 && now-before < int64(c) {
			ts := unix.NsecToTimespec(int64(c))
			_ = unix.Nanosleep(&ts, nil)
		}
		// A goroutine that only ever goes from one system call to the next
		// looks stuck to the runtime: after 10 ms on one scheduler tick,
		// sysmon takes its P away (handoff) and polls every 20 us again.
		// Passing through the scheduler every yieldEvery, and whenever
		// epoll_wait times out (5 ms), keeps sysmon asleep. (Blocking in
		// epoll_wait on a locked thread, or parking in Go's netpoller,
		// both measured worse.) udpio.Yield does it without waking an idle
		// thread, which runtime.Gosched did every time (the woken thread
		// then stole the loop: a futex wake-up, a sleep and a migration).
		if now-yielded > yieldEvery {
			udpio.Yield()
			yielded = now
		}
		if s.cfg.Coalesce > 0 {
			before = time.Now().UnixNano()
		}
	}
}

// fromClients drains the listener: ChannelData goes to its peer straight
// from the receive buffer, STUN messages to the control path.
func (e *engine) fromClients(used int) int {
	s := e.s
	for rounds := 0; rounds < 4; rounds++ {
		if used == engineBatch {
			e.flush()
			used = 0
		}
		k := e.recv(e.lfd, used, 0)
		if e.raw != nil {
			e.up.toPeer = e
		}
		for j := used; j < used+k; j++ {
			b := e.bufs[j][:e.in[j].N]
			from := e.in[j].Addr
			key := fiveTuple{protoUDP, from}
			if isChannelData(b) {
				s.relayChannelData(key, b, &e.up)
				continue
			}
			s.handleMessage(b, key, sender{udp: e, shard: e.shard, addr: from}, &e.up)
		}
		// The payloads queued for peers are in the slots: send them
		// before the slots are read into again.
		e.flushPeers()
		e.up.toPeer = nil
		// Slots read from the listener are done with once handled.
		if k < engineBatch-used {
			return used
		}
	}
	return used
}

// queue takes a ChannelData payload for its peer onto the raw sender
// (peerQueue); data stays in its receive slot until flushPeers.
func (e *engine) queue(data []byte, from, to netip.AddrPort) bool {
	if e.raw.Len() == engineBatch {
		e.flushPeers()
	}
	i, ok := e.raw.Add(data, from, to)
	if ok {
		e.rawN[i] = len(data)
	}
	return ok
}

// flushPeers sends what queue took, in one sendmmsg: one system call for
// the batch's packets to peers instead of one sendto per packet, each of
// which may wake a peer that preempts the loop on the way out of the
// kernel. A datagram the kernel refuses is counted as a send error.
func (e *engine) flushPeers() {
	if e.raw == nil || e.raw.Len() == 0 {
		return
	}
	n, failed := e.raw.Flush()
	for i := 0; failed > 0 && i < n; i++ {
		if !e.raw.Sent(i) {
			e.up.packets--
			e.up.bytes -= e.rawN[i]
			e.up.sendErr++
			failed--
		}
	}
}

// fromPeers drains relay socket fd into the batch (at most one batch per
// socket per round, for fairness) and frames each packet for its client.
func (e *engine) fromPeers(fd, used int, now int64) int {
	s := e.s
	s.mu.RLock()
	rs := s.byFD[int32(fd)]
	var a *allocation
	shared := false
	if rs != nil {
		a, shared = rs.single, rs.shared
	}
	s.mu.RUnlock()
	if rs == nil {
		return used
	}
	if used == engineBatch {
		e.flush()
		used = 0
	}
	switch {
	case shared:
		// Read first, then find each packet's allocation by its source.
		k := e.recv(fd, used, headroom)
		for j := used; j < used+k; j++ {
			peer := e.in[j].Addr
			o := s.owner(rs, peer.Addr())
			if o == nil {
				e.down.noPerm++
				continue
			}
			o.mu.Lock()
			if !o.closed {
				e.toClientLocked(o, j, e.in[j].N, peer, now, &e.down)
			}
			o.mu.Unlock()
		}
		return used + k
	case a == nil:
		// A socket between its allocation's deletion and its close:
		// drain and drop.
		k := e.recv(fd, used, headroom)
		e.down.noPerm += k
		return used
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return used
	}
	k := e.recv(fd, used, headroom)
	for j := used; j < used+k; j++ {
		e.toClientLocked(a, j, e.in[j].N, e.in[j].Addr, now, &e.down)
	}
	a.mu.Unlock()
	return used + k
}

// recv reads what fd has queued into slots from used on, each at offset
// off (leaving headroom for a header) and short of the buffer's last 4
// bytes (room for padding); it returns how many datagrams it read.
func (e *engine) recv(fd, used, off int) int {
	for i := used; i < engineBatch; i++ {
		e.in[i].Buf = e.bufs[i][off : bufSize-4 : bufSize-4]
	}
	return e.rb.Recv(fd, e.in[used:])
}

// downStats are the peer-to-client counters of one round.
type downStats struct {
	packets, bytes, noPerm, bw, queue int
}

// toClientLocked frames datagram slot j from peer for a's client: a
// ChannelData message when a channel is bound to the peer, a Data
// indication otherwise (RFC 8656 sections 11.5 and 12.6). The header is
// written into the slot's headroom.
func (e *engine) toClientLocked(a *allocation, j, n int, peer netip.AddrPort, now int64, st *downStats) {
	if !a.permittedLocked(peer.Addr(), now) {
		st.noPerm++
		return
	}
	if !a.down.take(n, now, e.s.cfg.BandwidthPerAllocation) {
		st.bw++
		return
	}
	buf := e.bufs[j]
	var start, length int
	if ch := a.byPeer[peer]; ch != nil && ch.expires > now {
		start = headroom - 4
		binary.BigEndian.PutUint16(buf[start:], ch.num)
		binary.BigEndian.PutUint16(buf[start+2:], uint16(n))
		length = 4 + n
		if a.out.stream != nil && !a.out.stream.datagram {
			for length%4 != 0 {
				buf[start+length] = 0
				length++
			}
		}
	} else {
		e.ctr++
		binary.BigEndian.PutUint64(e.tid[4:], e.ctr)
		start, length = putDataIndication(buf, n, peer, &e.tid)
	}
	st.packets++
	st.bytes += n
	if a.out.stream != nil {
		if !a.out.stream.enqueue(buf[start : start+length]) {
			st.queue++
		}
		return
	}
	e.out = append(e.out, udpio.Message{Buf: buf[start : start+length], N: length, Addr: a.out.addr})
}

// flush sends the batch to the clients with sendmmsg and publishes the
// round's counters.
func (e *engine) flush() {
	if len(e.out) > 0 {
		e.sendBatch(e.out)
		clear(e.out)
		e.out = e.out[:0]
	}
	e.up.flush(e.s.m)
	st := &e.down
	m := e.s.m
	if st.packets > 0 {
		m.toClientPackets.Add(float64(st.packets))
		m.toClientBytes.Add(float64(st.bytes))
	}
	addIf(m.dropNoPermission, st.noPerm)
	addIf(m.dropBandwidth, st.bw)
	addIf(m.dropQueueFull, st.queue)
	*st = downStats{}
}

// sendBatch writes msgs from the listener socket; a datagram the kernel
// refuses is skipped and counted.
func (e *engine) sendBatch(msgs []udpio.Message) {
	if _, dropped := e.wb.Send(e.lfd, e.lv6, msgs); dropped > 0 {
		e.s.m.dropSendError.Add(float64(dropped))
	}
}
