//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package mediaproxy

import (
	"net/netip"
	"sync"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

// poller reads every inside socket from one udpio.Set. At RTP rates each
// inside socket holds one packet per wake-up, so a goroutine per socket
// pays a scheduler round trip and a sendto per packet; here one wait
// serves all the ready sockets, each is read once (level-triggered: more
// data is reported again), and what goes out of the fixed ports leaves in
// one sendmmsg per batch. The loop waits in Go's netpoller (Set.Poll)
// like any socket instead of blocking a thread in epoll_wait (a blocking
// system call costs Go a thread hand-off and wakes its monitor thread:
// measured as most of the system time before this).
type poller struct {
	set *udpio.Set
	mu  sync.Mutex // guards fds
	fds map[int32]pollEntry
}

type pollEntry struct {
	s    *stream
	rtcp bool
}

func (p *Proxy) startPoller() error {
	set, err := udpio.NewSet(256)
	if err != nil {
		return err
	}
	p.poller = &poller{set: set, fds: map[int32]pollEntry{}}
	p.wg.Add(1)
	go p.pollLoop()
	return nil
}

// stopPoller ends the loop.
func (p *Proxy) stopPoller() { p.poller.set.Stop() }

// closePoller releases the set once the loop returned.
func (p *Proxy) closePoller() { p.poller.set.Close() }

// startInside registers s's two inside sockets with the loop.
func (p *Proxy) startInside(s *stream) {
	pl := p.poller
	for _, x := range []struct {
		rtcp bool
		fd   int
	}{{false, s.rtpFD}, {true, s.rtcpFD}} {
		pl.mu.Lock()
		pl.fds[int32(x.fd)] = pollEntry{s: s, rtcp: x.rtcp}
		pl.mu.Unlock()
		if err := pl.set.Add(x.fd, 0); err != nil {
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
		pl.set.Remove(fd)
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
	rtpOut := udpio.NewMessages(udpio.DefaultBatch, 0)
	rtcpOut := udpio.NewMessages(16, 0)
	type sent struct {
		s *stream
		n int
	}
	rtpSent := make([]sent, 0, udpio.DefaultBatch)
	rtcpSent := make([]sent, 0, 16)
	rb := udpio.NewBatch(1)
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
	for {
		evs, err := pl.set.Poll()
		if err != nil {
			return
		}
		pl.mu.Lock()
		for _, ev := range evs {
			fd := int32(ev.FD())
			e, ok := pl.fds[fd]
			if !ok {
				continue
			}
			slot := rtpOut[len(rtpSent) : len(rtpSent)+1]
			if e.rtcp {
				slot = rtcpOut[len(rtcpSent) : len(rtcpSent)+1]
			}
			m := &slot[0]
			if rb.Recv(int(fd), slot) == 0 {
				continue
			}
			nr := m.N
			dst, ok := p.fromInsideLocked(e.s, e.rtcp, m.Addr)
			if !ok {
				continue
			}
			m.Addr = dst
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
