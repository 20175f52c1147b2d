//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package mediaproxy

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

// poller reads every inside socket from one epoll loop. At RTP rates each
// inside socket holds one packet per wake-up, so a goroutine per socket
// pays a scheduler round trip and a sendto per packet; here one epoll_wait
// serves all the ready sockets, each is read once (level-triggered: more
// data is reported again), and what goes out of the fixed ports leaves in
// one sendmmsg per batch.
type poller struct {
	epfd int
	// file wraps epfd for Go's netpoller: the loop waits for the epoll
	// descriptor to become readable like any socket instead of blocking a
	// thread in epoll_wait (a blocking system call costs Go a thread
	// hand-off and wakes its monitor thread: measured as most of the
	// system time before this).
	file *os.File
	mu   sync.Mutex // guards fds
	fds  map[int32]pollEntry
}

type pollEntry struct {
	s    *stream
	rtcp bool
}

func (p *Proxy) startPoller() error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return err
	}
	p.poller = &poller{epfd: epfd, file: os.NewFile(uintptr(epfd), "mediaproxy-epoll"), fds: map[int32]pollEntry{}}
	p.wg.Add(1)
	go p.pollLoop()
	return nil
}

// stopPoller ends the loop: closing the descriptor fails its wait.
func (p *Proxy) stopPoller() { p.poller.file.Close() }

func (p *Proxy) closePoller() {}

// startInside registers s's two inside sockets with the epoll loop.
func (p *Proxy) startInside(s *stream) {
	pl := p.poller
	for _, x := range []struct {
		rtcp bool
		fd   int
	}{{false, s.rtpFD}, {true, s.rtcpFD}} {
		pl.mu.Lock()
		pl.fds[int32(x.fd)] = pollEntry{s: s, rtcp: x.rtcp}
		pl.mu.Unlock()
		if err := unix.EpollCtl(pl.epfd, unix.EPOLL_CTL_ADD, x.fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(x.fd)}); err != nil {
			p.log.Warn("epoll add", "err", err)
		}
	}
	if s.gone.Load() { // released meanwhile
		p.stopInside(s)
	}
}

// stopInside unregisters s's sockets; the caller closes them afterwards,
// so a reused descriptor number never reaches the old stream.
func (p *Proxy) stopInside(s *stream) {
	pl := p.poller
	for _, fd := range []int{s.rtpFD, s.rtcpFD} {
		_ = unix.EpollCtl(pl.epfd, unix.EPOLL_CTL_DEL, fd, nil)
		pl.mu.Lock()
		if e, ok := pl.fds[int32(fd)]; ok && e.s == s {
			delete(pl.fds, int32(fd))
		}
		pl.mu.Unlock()
	}
}

func (p *Proxy) pollLoop() {
	defer p.wg.Done()
	pl := p.poller
	events := make([]unix.EpollEvent, 256)
	rtpOut := udpio.NewMessages(udpio.DefaultBatch, 0)
	rtcpOut := udpio.NewMessages(16, 0)
	type sent struct {
		s *stream
		n int
	}
	rtpSent := make([]sent, 0, udpio.DefaultBatch)
	rtcpSent := make([]sent, 0, 16)
	var rsa unix.RawSockaddrInet6
	flush := func(rtcp bool) {
		out, msgs, ss := p.rtp, rtpOut[:len(rtpSent)], rtpSent
		if rtcp {
			out, msgs, ss = p.rtcp, rtcpOut[:len(rtcpSent)], rtcpSent
		}
		if len(msgs) == 0 {
			return
		}
		done, err := out.WriteBatch(msgs)
		if err != nil {
			p.c.DropWriteError.Add(uint64(len(msgs) - done))
		}
		for i := 0; i < done && i < len(ss); i++ {
			p.sentToClient(ss[i].s, rtcp, ss[i].n)
		}
		if rtcp {
			rtcpSent = rtcpSent[:0]
		} else {
			rtpSent = rtpSent[:0]
		}
	}
	rc, err := pl.file.SyscallConn()
	if err != nil {
		return
	}
	var n int
	wait := func(fd uintptr) bool {
		var err error
		n, err = unix.EpollWait(int(fd), events, 0)
		return n > 0 || (err != nil && !errors.Is(err, unix.EINTR))
	}
	for {
		if err := rc.Read(wait); err != nil {
			return
		}
		pl.mu.Lock()
		for i := 0; i < n; i++ {
			fd := events[i].Fd
			e, ok := pl.fds[fd]
			if !ok {
				continue
			}
			m := &rtpOut[len(rtpSent)]
			if e.rtcp {
				m = &rtcpOut[len(rtcpSent)]
			}
			nr, src, ok := recvfrom(int(fd), m.Buf, &rsa)
			if !ok {
				continue
			}
			dst, ok := p.fromInsideLocked(e.s, e.rtcp, src)
			if !ok {
				continue
			}
			m.N, m.Addr = nr, dst
			if e.rtcp {
				rtcpSent = append(rtcpSent, sent{e.s, nr})
				if len(rtcpSent) == len(rtcpOut) {
					flush(true)
				}
			} else {
				rtpSent = append(rtpSent, sent{e.s, nr})
				if len(rtpSent) == len(rtpOut) {
					flush(false)
				}
			}
		}
		pl.mu.Unlock()
		flush(false)
		flush(true)
	}
}

// fromInsideLocked is fromInside called with the poller's lock held; the
// first packet of a stream takes p.mu to record the server's source, which
// never waits on the poller's lock, so the order is safe.
func (p *Proxy) fromInsideLocked(s *stream, rtcp bool, src netip.AddrPort) (netip.AddrPort, bool) {
	return p.fromInside(s, rtcp, src)
}

// recvfrom reads one datagram without blocking or allocating.
func recvfrom(fd int, buf []byte, rsa *unix.RawSockaddrInet6) (int, netip.AddrPort, bool) {
	l := uint32(unsafe.Sizeof(*rsa))
	n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)),
		unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(rsa)), uintptr(unsafe.Pointer(&l)))
	if errno != 0 {
		return 0, netip.AddrPort{}, false
	}
	var ap netip.AddrPort
	switch rsa.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		ap = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
	case unix.AF_INET6:
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&rsa.Port))[:])
		ap = netip.AddrPortFrom(netip.AddrFrom16(rsa.Addr).Unmap(), port)
	default:
		return 0, netip.AddrPort{}, false
	}
	return int(n), ap, true
}
