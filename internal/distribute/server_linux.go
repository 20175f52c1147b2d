//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package distribute

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

// PathUserspace names the batched user-space data path (Server.Path).
const PathUserspace = "userspace"

// Server serves a Table on its listening sockets with one event loop.
type Server struct {
	cfg   Config
	table *Table
	m     *metrics
	set   *udpio.Set
	fds   []int
	v6    []bool
	addrs []netip.AddrPort

	mu      sync.Mutex // guards started
	started bool
	done    chan struct{}
	once    sync.Once
}

// New opens the listening sockets. The table is empty. On error the
// Kernel, if any, is closed.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		if cfg.Kernel != nil {
			_ = cfg.Kernel.Close()
		}
		return nil, err
	}
	set, err := udpio.NewSet(0)
	if err != nil {
		if cfg.Kernel != nil {
			_ = cfg.Kernel.Close()
		}
		return nil, err
	}
	s := &Server{cfg: cfg, set: set, done: make(chan struct{})}
	for i, a := range cfg.Listen {
		fd, got, err := udpio.OpenFD(a, udpio.FDOptions{V6: a.Addr().Is6(), V6Only: a.Addr().Is6(), RecvErr: true,
			ReadBuffer: cfg.ReadBuffer, WriteBuffer: cfg.WriteBuffer})
		if err != nil {
			s.cleanup()
			return nil, fmt.Errorf("distribute: listen %v: %w", a, err)
		}
		s.fds, s.v6, s.addrs = append(s.fds, fd), append(s.v6, a.Addr().Is6()), append(s.addrs, got)
		if err := set.Add(fd, uint32(i)); err != nil {
			s.cleanup()
			return nil, err
		}
	}
	// Never send to our own ports: a receiver there would loop.
	pol := cfg.Policy
	pol.OwnEndpoints = append(append([]netip.AddrPort(nil), pol.OwnEndpoints...), s.addrs...)
	s.table = newTable(s.addrs, cfg.MaxStreams, cfg.MaxReceivers, &pol)
	if s.m, err = newMetrics(cfg.Registerer, s.table, s.Path()); err != nil {
		s.cleanup()
		return nil, err
	}
	if cfg.Kernel != nil {
		s.table.mu.Lock()
		s.table.kernel = cfg.Kernel
		s.table.syncErr = func(err error) {
			s.m.syncErrors.Inc()
			s.cfg.Log.Error("distribute: kernel path sync", "err", err)
		}
		s.table.mu.Unlock()
	}
	return s, nil
}

// Table is the server's distribution table.
func (s *Server) Table() *Table { return s.table }

// Addrs are the listening addresses (ports chosen by the kernel filled in).
func (s *Server) Addrs() []netip.AddrPort { return s.addrs }

// Path names the data path in use: the kernel's when there is one (user
// space then serves what it passes up), else PathUserspace.
func (s *Server) Path() string {
	if s.cfg.Kernel != nil {
		return s.cfg.Kernel.Path()
	}
	return PathUserspace
}

// Ready reports whether the server serves (for /readyz).
func (s *Server) Ready() error {
	if s.set.Stopped() {
		return errors.New("distribute: stopped")
	}
	return nil
}

// Run serves until ctx ends or Close; it removes receivers that stopped
// answering every ReapInterval.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.started || s.set.Stopped() {
		s.mu.Unlock()
		return errors.New("distribute: Run called twice or after Close")
	}
	s.started = true
	s.mu.Unlock()
	defer close(s.done)
	defer s.cleanup()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(2)
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
			s.set.Stop()
		case <-stop:
		}
	}()
	go func() {
		defer wg.Done()
		s.reapLoop(stop)
	}()
	s.cfg.Log.Info("distribute: serving", "path", s.Path(), "listen", s.addrs)
	s.loop()
	close(stop)
	wg.Wait()
	return nil
}

func (s *Server) reapLoop(stop chan struct{}) {
	t := time.NewTicker(s.cfg.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		s.table.Reap(time.Now().UnixNano(), s.cfg.UnreachableTimeout, s.cfg.RTCPTimeout, func(k StreamKey, a netip.AddrPort, why Removal) {
			s.m.removed[why].Inc()
			s.cfg.Log.Info("distribute: receiver removed", "stream", k.String(), "receiver", a, "reason", why.String())
		})
		if s.cfg.Kernel != nil {
			s.table.Resync()
		}
	}
}

// Close stops the server and releases its sockets; it is idempotent.
func (s *Server) Close() error {
	s.set.Stop()
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if started {
		<-s.done
	} else {
		s.cleanup()
	}
	return nil
}

func (s *Server) cleanup() {
	s.once.Do(func() {
		s.set.Stop()
		for _, fd := range s.fds {
			s.set.Remove(fd)
			_ = udpio.CloseFD(fd)
		}
		s.set.Close()
		if s.cfg.Kernel != nil {
			if s.table != nil {
				s.table.mu.Lock()
				s.table.kernel = nil
				s.table.mu.Unlock()
			}
			_ = s.cfg.Kernel.Close()
		}
	})
}

// Loop timing, as internal/turn measured it: pass through the scheduler
// every yieldEvery, park in the netpoller after parkAfter without events.
const (
	yieldEvery = int64(2 * time.Millisecond)
	parkAfter  = int64(100 * time.Millisecond)
)

// loop is the one data-path goroutine.
func (s *Server) loop() {
	b := udpio.NewBatch(s.cfg.Batch)
	in := udpio.NewMessages(s.cfg.Batch, 0)
	var fd int
	var v6 bool
	var p *path
	p = newPath(b.Size()*4, func(out []udpio.Message) {
		sent, dropped := b.Send(fd, v6, out)
		p.c.sent += uint64(sent)
		p.c.sendDrops += uint64(dropped)
	})
	var yielded int64
	active := time.Now().UnixNano()
	for {
		evs, err := s.set.Wait(5)
		if s.set.Stopped() {
			return
		}
		if err != nil {
			s.cfg.Log.Error("distribute: epoll_wait", "err", err)
			return
		}
		now := time.Now().UnixNano()
		if len(evs) == 0 {
			udpio.Yield()
			yielded = now
			if now-active < parkAfter {
				continue
			}
			if evs = s.set.Park(); len(evs) == 0 || s.set.Stopped() {
				continue
			}
			now = time.Now().UnixNano()
		}
		active = now
		for _, ev := range evs {
			i := int(ev.Tag())
			fd, v6 = ev.FD(), s.v6[i]
			n := b.Recv(fd, in)
			// The snapshot is loaded after the read: a change made before
			// a packet was sent is in force for it.
			snap := s.table.load()
			if n == 0 {
				s.drainErrors(b, fd, &snap.ports[i], p, now)
				continue
			}
			p.route(&snap.ports[i], in[:n], now)
			if len(p.out) > 0 {
				p.flush(p.out)
				p.out = p.out[:0]
			}
			s.m.add(&p.c)
		}
		if now-yielded > yieldEvery {
			udpio.Yield()
			yielded = now
		}
	}
}

// drainErrors reads the socket's error queue: ICMP port unreachable for a
// receiver marks it; a bounded number per round, for fairness.
func (s *Server) drainErrors(b *udpio.Batch, fd int, pv *portView, p *path, now int64) {
	for range 64 {
		e, ok := b.RecvErr(fd)
		if !ok {
			return
		}
		if e.PortUnreachable() {
			s.m.unreachable.Inc()
			p.unreachable(pv, e.Dst, now)
		}
	}
}
