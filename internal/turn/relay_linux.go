//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package turn

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

// sockaddr is a peer address encoded once for sendto(2).
type sockaddr struct {
	raw unix.RawSockaddrInet6 // or a RawSockaddrInet4 in its first bytes
	n   uint32
}

// encodeSockaddr encodes ap for a socket of the given family; ok is false
// when the family cannot reach it.
func encodeSockaddr(ap netip.AddrPort, v6 bool, sa *sockaddr) bool {
	a := ap.Addr()
	if !v6 {
		a = a.Unmap()
		if !a.Is4() {
			return false
		}
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa.raw))
		p.Family = unix.AF_INET
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&p.Port))[:], ap.Port())
		p.Addr = a.As4()
		sa.n = unix.SizeofSockaddrInet4
		return true
	}
	sa.raw.Family = unix.AF_INET6
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.raw.Port))[:], ap.Port())
	sa.raw.Addr = a.As16()
	sa.n = unix.SizeofSockaddrInet6
	return true
}

func decodeSockaddr(raw *unix.RawSockaddrInet6) netip.AddrPort {
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&raw.Port))[:])
	if raw.Family == unix.AF_INET {
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(raw))
		return netip.AddrPortFrom(netip.AddrFrom4(p.Addr), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(raw.Addr).Unmap(), port)
}

// sendTo sends b from relay socket fd to sa without allocating. A full
// socket buffer drops the packet (EAGAIN), as a UDP relay should.
func sendTo(fd int, b []byte, sa *sockaddr) error {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	_, _, errno := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(p), uintptr(len(b)), 0,
		uintptr(unsafe.Pointer(&sa.raw)), uintptr(sa.n))
	if errno != 0 {
		return errno
	}
	return nil
}

var errAddrInUse = unix.EADDRINUSE

type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// engine is one event loop: a UDP listener socket and the relay sockets of
// the allocations made through it, in one epoll set, served by one
// goroutine, much as coturn's relay threads are (the goroutine is not
// locked to its thread; it yields to the scheduler every few ms). It
// blocks in epoll_wait itself: parking in Go's netpoller instead
// would add a second epoll_wait and a scheduler hand-off to every wake-up,
// which at RTP packet rates (one packet per wake-up) is most of the cost.
type engine struct {
	s     *Server
	shard int
	lfd   int // listener socket
	laddr netip.AddrPort
	lv6   bool // listener is AF_INET6
	epfd  int
	evfd  int
	v6    bool // relay sockets are AF_INET6

	closed atomic.Bool
	once   sync.Once

	smu     sync.Mutex            // guards streams
	streams map[int32]*streamConn // TCP clients served by this loop, by socket
	sbuf    []byte                // the loop's read buffer for them

	// Loop state, owned by run.
	hdrs   []mmsghdr
	iov    []unix.Iovec
	names  []unix.RawSockaddrInet6
	bufs   [][]byte
	events []unix.EpollEvent
	out    []udpio.Message
	whdrs  []mmsghdr
	wiov   []unix.Iovec
	wsa    []sockaddr
	tid    [12]byte
	ctr    uint64
	up     relayStats
	down   downStats
}

const (
	engineBatch = 64
	bufSize     = headroom + udpio.MaxPacket + 4
)

// newEngine opens the listener socket (joining port when non-zero) and the
// epoll set.
func newEngine(s *Server, shard int, listen netip.AddrPort, reusePort bool) (*engine, error) {
	e := &engine{s: s, shard: shard, lfd: -1, epfd: -1, evfd: -1, v6: s.cfg.RelayIP.Is6(), streams: map[int32]*streamConn{}}
	fail := func(err error) (*engine, error) { e.close(); return nil, err }
	la := listen.Addr()
	e.lv6 = la.Is6() && !la.Is4In6()
	fam := unix.AF_INET
	if e.lv6 {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail(fmt.Errorf("turn: socket: %w", err))
	}
	e.lfd = fd
	if reusePort {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	var sa unix.Sockaddr
	if e.lv6 {
		sa = &unix.SockaddrInet6{Port: int(listen.Port()), Addr: la.As16()}
	} else {
		sa = &unix.SockaddrInet4{Port: int(listen.Port()), Addr: la.Unmap().As4()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail(fmt.Errorf("turn: listen udp %s: %w", listen, err))
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		return fail(fmt.Errorf("turn: getsockname: %w", err))
	}
	switch g := got.(type) {
	case *unix.SockaddrInet4:
		e.laddr = netip.AddrPortFrom(netip.AddrFrom4(g.Addr), uint16(g.Port))
	case *unix.SockaddrInet6:
		e.laddr = netip.AddrPortFrom(netip.AddrFrom16(g.Addr).Unmap(), uint16(g.Port))
	}
	if e.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return fail(fmt.Errorf("turn: epoll: %w", err))
	}
	if e.evfd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return fail(fmt.Errorf("turn: eventfd: %w", err))
	}
	for _, f := range []int{e.evfd, e.lfd} {
		if err := e.add(f); err != nil {
			return fail(fmt.Errorf("turn: epoll: %w", err))
		}
	}
	e.hdrs = make([]mmsghdr, engineBatch)
	e.iov = make([]unix.Iovec, engineBatch)
	e.names = make([]unix.RawSockaddrInet6, engineBatch)
	e.bufs = make([][]byte, engineBatch)
	e.events = make([]unix.EpollEvent, 128)
	e.out = make([]udpio.Message, 0, engineBatch)
	e.whdrs = make([]mmsghdr, engineBatch)
	e.wiov = make([]unix.Iovec, engineBatch)
	e.wsa = make([]sockaddr, engineBatch)
	e.sbuf = make([]byte, streamReadBuf)
	slab := make([]byte, engineBatch*bufSize)
	for i := range e.bufs {
		e.bufs[i] = slab[i*bufSize : (i+1)*bufSize : (i+1)*bufSize]
	}
	_, _ = cryptoRead(e.tid[:4])
	return e, nil
}

// open binds a non-blocking relay socket to ap.
func (e *engine) open(ap netip.AddrPort) (int, error) {
	fam := unix.AF_INET
	if e.v6 {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("turn: socket: %w", err)
	}
	var sa unix.Sockaddr
	if e.v6 {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	} else {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EADDRINUSE) {
			return -1, errAddrInUse
		}
		return -1, fmt.Errorf("turn: bind %s: %w", ap, err)
	}
	return fd, nil
}

func (e *engine) add(fd int) error {
	return unix.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)})
}

// remove takes relay socket fd out of the epoll set and closes it.
func (e *engine) remove(fd int) {
	_ = unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	_ = unix.Close(fd)
}

// WriteTo sends one datagram from the listener socket (control-path
// answers). Safe for concurrent use: one sendto per datagram.
func (e *engine) WriteTo(b []byte, addr netip.AddrPort) error {
	var sa sockaddr
	if !encodeSockaddr(addr, e.lv6, &sa) {
		return ErrUnsupported
	}
	return sendTo(e.lfd, b, &sa)
}

// wake makes run return.
func (e *engine) wake() {
	e.closed.Store(true)
	one := [8]byte{7: 1}
	if isLittleEndian {
		one = [8]byte{1}
	}
	_, _ = unix.Write(e.evfd, one[:])
}

var isLittleEndian = func() bool { x := uint16(1); return *(*byte)(unsafe.Pointer(&x)) == 1 }()

// close releases the listener, epoll and eventfd (after run returned).
func (e *engine) close() {
	e.once.Do(func() {
		for _, fd := range []int{e.lfd, e.epfd, e.evfd} {
			if fd >= 0 {
				_ = unix.Close(fd)
			}
		}
	})
}

// run serves the listener and the relay sockets until wake.
// yieldEvery is how often the event loop passes through the scheduler (see
// run). Measured on 2 vCPUs at RTP rates: every 2 ms cost less CPU per
// relayed packet than never (sysmon preempting) or every 8 ms.
const yieldEvery = int64(2 * time.Millisecond)

func (e *engine) run() {
	s := e.s
	var before, yielded int64
	active := time.Now().UnixNano() // the last round with an event
	for {
		n, err := unix.EpollWait(e.epfd, e.events, 5)
		if e.closed.Load() {
			return
		}
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			s.cfg.Log.Error("turn: epoll_wait", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		now := time.Now().UnixNano()
		if n == 0 {
			runtime.Gosched()
			yielded = now
			if now-active < parkAfter {
				continue
			}
			// Idle: park until there is work (park_linux.go).
			if n = e.park(); n == 0 || e.closed.Load() {
				continue
			}
			now = time.Now().UnixNano()
		}
		active = now
		used := 0
		for i := 0; i < n; i++ {
			fd := int(e.events[i].Fd)
			if e.events[i].Pad == streamTag {
				e.fromStream(fd, e.events[i].Events)
				continue
			}
			switch fd {
			case e.evfd:
				continue
			case e.lfd:
				used = e.fromClients(used)
				continue
			}
			used = e.fromPeers(fd, used, now)
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
		// both measured worse.)
		if now-yielded > yieldEvery {
			runtime.Gosched()
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
		for j := used; j < used+k; j++ {
			b := e.bufs[j][:e.hdrs[j].len]
			from := decodeSockaddr(&e.names[j])
			key := fiveTuple{protoUDP, from}
			if isChannelData(b) {
				s.relayChannelData(key, b, &e.up)
				continue
			}
			s.handleMessage(b, key, sender{udp: e, shard: e.shard, addr: from}, &e.up)
		}
		// Slots read from the listener are done with once handled.
		if k < engineBatch-used {
			return used
		}
	}
	return used
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
			peer := decodeSockaddr(&e.names[j])
			o := s.owner(rs, peer.Addr())
			if o == nil {
				e.down.noPerm++
				continue
			}
			o.mu.Lock()
			if !o.closed {
				e.toClientLocked(o, j, int(e.hdrs[j].len), peer, now, &e.down)
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
		e.toClientLocked(a, j, int(e.hdrs[j].len), decodeSockaddr(&e.names[j]), now, &e.down)
	}
	a.mu.Unlock()
	return used + k
}

// recv reads what fd has queued into slots from used on, each at offset
// off; it returns how many datagrams it read.
func (e *engine) recv(fd, used, off int) int {
	n := engineBatch - used
	for i := used; i < engineBatch; i++ {
		b := e.bufs[i][off : bufSize-4]
		e.iov[i].Base = &b[0]
		e.iov[i].SetLen(len(b))
		h := &e.hdrs[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&e.names[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		h.Iov = &e.iov[i]
		h.Iovlen = 1
		h.Control = nil
		h.Controllen = 0
		h.Flags = 0
	}
	r, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&e.hdrs[used])), uintptr(n), unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return 0
	}
	return int(r)
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
	k := 0
	for i := range msgs {
		if !encodeSockaddr(msgs[i].Addr, e.lv6, &e.wsa[k]) {
			e.s.m.dropSendError.Inc()
			continue
		}
		b := msgs[i].Buf[:msgs[i].N]
		e.wiov[k].Base = &b[0]
		e.wiov[k].SetLen(len(b))
		h := &e.whdrs[k].hdr
		h.Name = (*byte)(unsafe.Pointer(&e.wsa[k].raw))
		h.Namelen = e.wsa[k].n
		h.Iov = &e.wiov[k]
		h.Iovlen = 1
		h.Control = nil
		h.Controllen = 0
		h.Flags = 0
		k++
	}
	for off := 0; off < k; {
		r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(e.lfd), uintptr(unsafe.Pointer(&e.whdrs[off])), uintptr(k-off), unix.MSG_DONTWAIT, 0, 0)
		if errno != 0 {
			if errno == unix.EINTR {
				continue
			}
			// The datagram at off failed (full buffer, unreachable):
			// drop it and go on.
			e.s.m.dropSendError.Inc()
			off++
			continue
		}
		off += int(r)
	}
}
