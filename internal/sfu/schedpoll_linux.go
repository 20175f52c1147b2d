package sfu

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// poller is an empty epoll set: waiting on it only times out.
type poller struct {
	fd int
	ev []unix.EpollEvent
}

func newPoller() (*poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	return &poller{fd: fd, ev: make([]unix.EpollEvent, 1)}, nil
}

// wait blocks in epoll_wait for ms milliseconds, then yields.
func (p *poller) wait(ms int) {
	_, _ = unix.EpollWait(p.fd, p.ev, ms)
	runtime.Gosched()
}

func (p *poller) close() { _ = unix.Close(p.fd) }
