//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package turn

import (
	"os"
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

// park waits in Go's netpoller until the loop has events (read into
// e.events) or is closed, and returns how many events it read. It
// registers a duplicate of the epoll descriptor (readable when the loop has
// events) with the netpoller only for the wait: registered for good, every
// event of a busy loop would also wake the runtime's netpoller.
func (e *engine) park() int {
	fd, err := unix.FcntlInt(uintptr(e.epfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	// O_NONBLOCK (shared with epfd; epoll_wait ignores it) makes the file
	// pollable, so os registers it with the netpoller.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return 0
	}
	f := os.NewFile(uintptr(fd), "turn-epoll")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	err = rc.Read(func(uintptr) bool {
		var err error
		n, err = unix.EpollWait(e.epfd, e.events, 0)
		if err != nil {
			n = 0
		}
		return n > 0 || e.closed.Load()
	})
	if err != nil {
		return 0
	}
	return n
}
