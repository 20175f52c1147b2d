//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package udpio

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// threadWait is the socket of a Conn opened with Options.ThreadWait: a
// raw descriptor outside Go's netpoller, whose reader waits in
// epoll_wait(2) on its own thread (a Set of this one socket). It stands
// in for the net.UDPConn's syscall.RawConn (Conn.rc), so ReadBatch and
// WriteBatch run the same code in both modes.
type threadWait struct {
	fd    int
	set   *Set
	laddr netip.AddrPort
	// mu is held shared by every use of fd and exclusively by close, so
	// that fd is closed (and its number free for reuse) only once no
	// call is using it.
	mu     sync.RWMutex
	closed atomic.Bool

	// Reader state, owned by the one reading goroutine.
	// short: the last read took fewer datagrams than it had room for, so
	// the queue is most likely empty: the next read waits first instead
	// of trying a read that fails with EAGAIN.
	short bool
	// yielded is when the reader last passed through the scheduler.
	yielded int64
}

// threadYieldEvery is how often a ThreadWait reader passes through the Go
// scheduler (udpio.Yield): a goroutine that only goes from one system
// call to the next looks stuck to the runtime, whose sysmon then
// preempts it with signals (internal/turn measured 2 ms as the cheapest).
const threadYieldEvery = int64(2 * time.Millisecond)

// listenThreadWait is Listen with Options.ThreadWait.
func listenThreadWait(network, addr string, o Options) (*Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("udpio: listen %s: ThreadWait needs a numeric address: %w", addr, err)
	}
	var v6 bool
	switch network {
	case "udp4":
	case "udp6":
		v6 = true
	case "udp":
		v6 = !ap.Addr().Unmap().Is4()
	default:
		return nil, fmt.Errorf("udpio: listen %s: network %q", addr, network)
	}
	fd, la, err := OpenFD(ap, FDOptions{V6: v6, V6Only: network == "udp6", ReusePort: o.ReusePort,
		ReadBuffer: o.ReadBuffer, WriteBuffer: o.WriteBuffer})
	if err != nil {
		return nil, err
	}
	set, err := NewSet(1)
	if err != nil {
		_ = CloseFD(fd)
		return nil, err
	}
	if err := set.Add(fd, 0); err != nil {
		set.Close()
		_ = CloseFD(fd)
		return nil, err
	}
	batch := o.Batch
	if batch <= 0 {
		batch = DefaultBatch
	}
	th := &threadWait{fd: fd, set: set, laddr: la}
	c := &Conn{rc: th, th: th, v6: v6, r: newMmsg(batch, 1), w: newMmsg(batch, 1)}
	c.readFn = c.doRead
	c.writeFn = c.doWrite
	if o.Coalesce {
		c.enableCoalesce()
	}
	return c, nil
}

// Control calls f with the descriptor (syscall.RawConn).
func (t *threadWait) Control(f func(fd uintptr)) error {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed.Load() {
		return net.ErrClosed
	}
	f(uintptr(t.fd))
	return nil
}

// Read calls f until it returns true, blocking the thread in epoll_wait
// between calls (syscall.RawConn). After a short read it waits before the
// first call.
func (t *threadWait) Read(f func(fd uintptr) bool) error {
	t.mu.RLock()
	defer t.mu.RUnlock()
	wait := t.short
	for {
		if t.closed.Load() {
			return net.ErrClosed
		}
		if !wait && f(uintptr(t.fd)) {
			return nil
		}
		wait = false
		if _, err := t.set.Wait(-1); err != nil {
			return err
		}
		if now := time.Now().UnixNano(); now-t.yielded > threadYieldEvery {
			Yield()
			t.yielded = now
		}
	}
}

// Write calls f until it returns true, waiting up to 5 ms at a time for
// room in the socket's buffer between calls (syscall.RawConn).
func (t *threadWait) Write(f func(fd uintptr) bool) error {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for {
		if t.closed.Load() {
			return net.ErrClosed
		}
		if f(uintptr(t.fd)) {
			return nil
		}
		pfd := [1]unix.PollFd{{Fd: int32(t.fd), Events: unix.POLLOUT}}
		if _, err := unix.Poll(pfd[:], 5); err != nil && !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// writeTo sends one datagram to a (encoded for a v6 socket or not).
func (t *threadWait) writeTo(b []byte, a netip.AddrPort, v6 bool) error {
	var sa Sockaddr
	if !sa.Set(a, v6) {
		return ErrAddrFamily
	}
	var serr error
	err := t.Write(func(fd uintptr) bool {
		serr = SendTo(int(fd), b, &sa)
		return !errors.Is(serr, unix.EAGAIN)
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return &net.OpError{Op: "sendto", Net: "udp", Err: serr}
	}
	return nil
}

// readFrom reads one datagram.
func (t *threadWait) readFrom(b []byte) (int, netip.AddrPort, error) {
	var n int
	var from unix.Sockaddr
	var rerr error
	err := t.Read(func(fd uintptr) bool {
		n, from, rerr = unix.Recvfrom(int(fd), b, unix.MSG_DONTWAIT)
		return !errors.Is(rerr, unix.EAGAIN) && !errors.Is(rerr, unix.EINTR)
	})
	if err != nil {
		return 0, netip.AddrPort{}, err
	}
	if rerr != nil {
		return 0, netip.AddrPort{}, &net.OpError{Op: "recvfrom", Net: "udp", Err: rerr}
	}
	return n, fromSockaddr(from), nil
}

// close wakes the reader, waits until no call uses the descriptor, then
// closes it. It is idempotent.
func (t *threadWait) close() error {
	if !t.closed.CompareAndSwap(false, true) {
		return nil
	}
	t.set.Stop()
	t.mu.Lock()
	defer t.mu.Unlock()
	err := CloseFD(t.fd)
	t.set.Close()
	return err
}
