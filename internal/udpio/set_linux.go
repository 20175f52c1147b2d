//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package udpio

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Set is a set of many non-blocking sockets served by one loop goroutine:
// an epoll(7) set. The loop waits for the sockets that have something
// (Wait, Park or Poll), drains each with Batch.Recv (recvmmsg: one system
// call for whatever the socket has queued) and sends what it gathered
// with Batch.Send (sendmmsg, one per socket). Sockets are added and
// removed at any time, from any goroutine; each carries a tag the loop
// reads back from its events (to tell a listener from a relay socket, or
// a stream from a datagram socket).
//
// Readiness is level-triggered: a socket left with data is reported
// again by the next wait, so a loop may read one batch per socket per
// round, for fairness.
type Set struct {
	epfd, evfd int
	events     []Event
	raw        []unix.EpollEvent // the same memory as events
	stopped    atomic.Bool
	once       sync.Once

	pmu  sync.Mutex
	poll syscall.RawConn // epfd in Go's netpoller, for Poll
	pf   *os.File
	pn   int
	pfn  func(uintptr) bool
}

// Event is one ready socket.
type Event struct{ e unix.EpollEvent }

// FD is the socket's descriptor.
func (e Event) FD() int { return int(e.e.Fd) }

// Tag is the tag the socket was added with.
func (e Event) Tag() uint32 { return uint32(e.e.Pad) }

// Readable reports that a read will not block: data, end of stream or an
// error is waiting.
func (e Event) Readable() bool {
	return e.e.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0
}

// Writable reports that a socket added with write interest
// (SetWriteInterest) has room.
func (e Event) Writable() bool { return e.e.Events&unix.EPOLLOUT != 0 }

// NewSet opens an empty set whose waits report up to maxEvents sockets
// (128 when <= 0).
func NewSet(maxEvents int) (*Set, error) {
	if maxEvents <= 0 {
		maxEvents = 128
	}
	s := &Set{epfd: -1, evfd: -1, events: make([]Event, maxEvents)}
	s.raw = unsafe.Slice((*unix.EpollEvent)(unsafe.Pointer(&s.events[0])), maxEvents)
	var err error
	if s.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("udpio: epoll: %w", err)
	}
	if s.evfd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		s.Close()
		return nil, fmt.Errorf("udpio: eventfd: %w", err)
	}
	if err := s.ctl(unix.EPOLL_CTL_ADD, s.evfd, 0, unix.EPOLLIN); err != nil {
		s.Close()
		return nil, err
	}
	s.pfn = s.pollOnce
	return s, nil
}

func (s *Set) ctl(op, fd int, tag uint32, ev uint32) error {
	if err := unix.EpollCtl(s.epfd, op, fd, &unix.EpollEvent{Events: ev, Fd: int32(fd), Pad: int32(tag)}); err != nil {
		return fmt.Errorf("udpio: epoll_ctl: %w", err)
	}
	return nil
}

// Add watches fd (a datagram or stream socket) for reading; its events
// carry tag.
func (s *Set) Add(fd int, tag uint32) error {
	return s.ctl(unix.EPOLL_CTL_ADD, fd, tag, unix.EPOLLIN|unix.EPOLLRDHUP)
}

// SetWriteInterest turns the report of room to write on or off for fd
// (added with tag), for a stream socket with a backlog.
func (s *Set) SetWriteInterest(fd int, tag uint32, on bool) error {
	ev := uint32(unix.EPOLLIN | unix.EPOLLRDHUP)
	if on {
		ev |= unix.EPOLLOUT
	}
	return s.ctl(unix.EPOLL_CTL_MOD, fd, tag, ev)
}

// Remove stops watching fd. Remove it before closing it, so that a reused
// descriptor number never reports for the old socket.
func (s *Set) Remove(fd int) { _ = unix.EpollCtl(s.epfd, unix.EPOLL_CTL_DEL, fd, nil) }

// ready returns the n events read, without the stop signal's.
func (s *Set) ready(n int) []Event {
	k := 0
	for i := 0; i < n; i++ {
		if int(s.raw[i].Fd) == s.evfd {
			continue
		}
		s.raw[k] = s.raw[i]
		k++
	}
	return s.events[:k]
}

// Wait blocks the thread in epoll_wait(2) up to msec milliseconds (0:
// not at all, -1: until an event) and returns the ready sockets, valid
// until the next wait. A loop that calls it under load avoids the
// scheduler hand-off a wait in Go's netpoller costs per wake-up; it
// should call runtime.Gosched every few milliseconds (see internal/turn).
// After Stop it returns no events.
func (s *Set) Wait(msec int) ([]Event, error) {
	n, err := unix.EpollWait(s.epfd, s.raw, msec)
	if err != nil {
		if errors.Is(err, unix.EINTR) {
			return nil, nil
		}
		return nil, fmt.Errorf("udpio: epoll_wait: %w", err)
	}
	return s.ready(n), nil
}

// Park waits in Go's netpoller until a socket is ready or the set is
// stopped, and returns the ready sockets. It registers a duplicate of the
// epoll descriptor with the netpoller only for this wait, for a loop that
// otherwise uses Wait: registered for good, every event of a busy loop
// would also wake the runtime's netpoller. Park costs a few system calls
// more than Wait, so it suits a loop that has been idle for a while.
func (s *Set) Park() []Event {
	fd, err := unix.FcntlInt(uintptr(s.epfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	// O_NONBLOCK (shared with epfd; epoll_wait ignores it) makes the file
	// pollable, so os registers it with the netpoller.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil
	}
	f := os.NewFile(uintptr(fd), "udpio-epoll")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	n := 0
	err = rc.Read(func(uintptr) bool {
		var err error
		n, err = unix.EpollWait(s.epfd, s.raw, 0)
		if err != nil {
			n = 0
		}
		return n > 0 || s.stopped.Load()
	})
	if err != nil {
		return nil
	}
	return s.ready(n)
}

// Poll waits in Go's netpoller, where the set stays registered, until a
// socket is ready, and returns the ready sockets; after Stop it returns
// net.ErrClosed. For a loop that always waits this way (each wake-up then
// costs a scheduler hand-off but no blocked thread).
func (s *Set) Poll() ([]Event, error) {
	s.pmu.Lock()
	if s.poll == nil {
		fd, err := unix.FcntlInt(uintptr(s.epfd), unix.F_DUPFD_CLOEXEC, 0)
		if err == nil {
			err = unix.SetNonblock(fd, true)
		}
		if err != nil {
			s.pmu.Unlock()
			return nil, fmt.Errorf("udpio: epoll: %w", err)
		}
		s.pf = os.NewFile(uintptr(fd), "udpio-epoll")
		if s.poll, err = s.pf.SyscallConn(); err != nil {
			s.pmu.Unlock()
			return nil, fmt.Errorf("udpio: epoll: %w", err)
		}
	}
	rc := s.poll
	s.pmu.Unlock()
	for {
		if err := rc.Read(s.pfn); err != nil {
			return nil, err
		}
		if s.stopped.Load() {
			return nil, net.ErrClosed
		}
		if ev := s.ready(s.pn); len(ev) > 0 {
			return ev, nil
		}
	}
}

func (s *Set) pollOnce(uintptr) bool {
	n, err := unix.EpollWait(s.epfd, s.raw, 0)
	if err != nil {
		n = 0
	}
	s.pn = n
	return n > 0 || s.stopped.Load()
}

// Stop makes the loop's waits return (Wait and Park with no events, Poll
// with net.ErrClosed); Stopped reports it. Safe from any goroutine.
func (s *Set) Stop() {
	s.stopped.Store(true)
	var one [8]byte
	*(*uint64)(unsafe.Pointer(&one[0])) = 1 // host order, as eventfd reads it
	_, _ = unix.Write(s.evfd, one[:])
}

// Stopped reports whether Stop was called.
func (s *Set) Stopped() bool { return s.stopped.Load() }

// Close releases the set once its loop has returned. It does not close
// the sockets in it.
func (s *Set) Close() {
	s.once.Do(func() {
		s.stopped.Store(true)
		if s.pf != nil {
			s.pf.Close()
		}
		for _, fd := range []int{s.epfd, s.evfd} {
			if fd >= 0 {
				_ = unix.Close(fd)
			}
		}
	})
}
