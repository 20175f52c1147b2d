//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package turn

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
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

// engine serves every relay socket from one epoll set and one goroutine.
type engine struct {
	s     *Server
	epfd  int
	evfd  int
	v6    bool
	batch int

	closed atomic.Bool
	once   sync.Once

	// Loop state, owned by run.
	hdrs   []mmsghdr
	iov    []unix.Iovec
	names  []unix.RawSockaddrInet6
	bufs   [][]byte
	events []unix.EpollEvent
	out    [][]udpio.Message // per UDP shard
	tid    [12]byte
	ctr    uint64
}

const bufSize = headroom + udpio.MaxPacket + 4

func newEngine(s *Server) (*engine, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("turn: epoll: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("turn: eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, fmt.Errorf("turn: epoll: %w", err)
	}
	const batch = 64
	e := &engine{s: s, epfd: epfd, evfd: evfd, v6: s.cfg.RelayIP.Is6(), batch: batch,
		hdrs: make([]mmsghdr, batch), iov: make([]unix.Iovec, batch), names: make([]unix.RawSockaddrInet6, batch),
		bufs: make([][]byte, batch), events: make([]unix.EpollEvent, 128), out: make([][]udpio.Message, len(s.udp))}
	slab := make([]byte, batch*bufSize)
	for i := range e.bufs {
		e.bufs[i] = slab[i*bufSize : (i+1)*bufSize : (i+1)*bufSize]
	}
	for i := range e.out {
		e.out[i] = make([]udpio.Message, 0, batch)
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

// remove takes fd out of the epoll set and closes it.
func (e *engine) remove(fd int) {
	_ = unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	_ = unix.Close(fd)
}

// wake makes run return once closed is set.
func (e *engine) wake() {
	e.closed.Store(true)
	var one [8]byte
	one[7] = 1
	if isLittleEndian {
		one = [8]byte{1}
	}
	_, _ = unix.Write(e.evfd, one[:])
}

var isLittleEndian = func() bool { x := uint16(1); return *(*byte)(unsafe.Pointer(&x)) == 1 }()

func (e *engine) close() {
	e.once.Do(func() {
		_ = unix.Close(e.epfd)
		_ = unix.Close(e.evfd)
	})
}

// run relays peer packets to clients until wake.
func (e *engine) run() {
	s := e.s
	var st downStats
	for {
		n, err := unix.EpollWait(e.epfd, e.events, -1)
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
		used := 0
		for i := 0; i < n; i++ {
			fd := int(e.events[i].Fd)
			if fd == e.evfd {
				continue
			}
			s.mu.RLock()
			a := s.byFD[int32(fd)]
			s.mu.RUnlock()
			if a == nil {
				continue
			}
			// Drain at most one batch per socket per round, for fairness.
			a.mu.Lock()
			if a.closed {
				a.mu.Unlock()
				continue
			}
			if used == e.batch {
				a.mu.Unlock()
				e.flush(&st)
				used = 0
				a.mu.Lock()
				if a.closed {
					a.mu.Unlock()
					continue
				}
			}
			k := e.recv(fd, used)
			now := time.Now().UnixNano()
			for j := used; j < used+k; j++ {
				e.toClientLocked(a, j, int(e.hdrs[j].len), decodeSockaddr(&e.names[j]), now, &st)
			}
			a.mu.Unlock()
			used += k
		}
		e.flush(&st)
	}
}

// recv reads what fd has queued into slots from used on; it returns how
// many datagrams it read.
func (e *engine) recv(fd, used int) int {
	n := e.batch - used
	for i := used; i < e.batch; i++ {
		b := e.bufs[i][headroom : bufSize-4]
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
		if a.out.stream != nil {
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
	sh := a.out.shard
	e.out[sh] = append(e.out[sh], udpio.Message{Buf: buf[start : start+length], N: length, Addr: a.out.addr})
}

func (e *engine) flush(st *downStats) {
	for i, out := range e.out {
		if len(out) == 0 {
			continue
		}
		_, _ = e.s.udp[i].WriteBatch(out)
		clear(out)
		e.out[i] = out[:0]
	}
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
