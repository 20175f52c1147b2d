//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package turn

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// parkAfter is how long an event loop goes without any event before it
// parks in Go's netpoller instead of waking every 5 ms. Under traffic the
// loop keeps its raw epoll_wait (parking per wake-up measured far worse,
// see run); an idle loop, and a loop whose data path the kernel carries
// (--offload ebpf), then costs nothing: about 1 % of a CPU before (200
// wake-ups a second, each with its pass through the scheduler).
const parkAfter = int64(200 * time.Millisecond)

// parker blocks an idle event loop in Go's netpoller on a duplicate of its
// epoll descriptor, which polls readable when the loop has events.
type parker struct {
	f  *os.File
	rc syscall.RawConn
}

func newParker(epfd int) (*parker, error) {
	fd, err := unix.FcntlInt(uintptr(epfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("turn: dup epoll: %w", err)
	}
	// O_NONBLOCK (shared with epfd; epoll_wait ignores it) makes the file
	// pollable, so os registers it with the netpoller.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("turn: epoll nonblock: %w", err)
	}
	f := os.NewFile(uintptr(fd), "turn-epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("turn: epoll rawconn: %w", err)
	}
	return &parker{f: f, rc: rc}, nil
}

// park waits in the netpoller until the loop has events (read into
// e.events) or is closed, and returns how many events it read.
func (e *engine) park() int {
	n := 0
	err := e.parker.rc.Read(func(uintptr) bool {
		var err error
		n, err = unix.EpollWait(e.epfd, e.events, 0)
		if err != nil {
			n = 0
		}
		return n > 0 || e.closed.Load()
	})
	if err != nil {
		// Without the netpoller, wait as before: with a timeout.
		time.Sleep(5 * time.Millisecond)
		return 0
	}
	return n
}

func (p *parker) close() {
	if p != nil {
		_ = p.f.Close()
	}
}
