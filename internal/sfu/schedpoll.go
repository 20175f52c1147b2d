package sfu

import (
	"context"
	"time"
)

// The scheduler poll (on unless Config.NoSchedulerPoll) is a goroutine that, while the
// node forwards media (to its subscribers, or through its relay port), blocks in epoll_wait on an empty epoll set for 5 ms
// at a time and yields the processor after each wait. It does no work of
// its own. Measured on this project's 2-vCPU VM (docs/benchmarks.md, SFU,
// "The scheduler poll"), it makes the same forwarding 25-35 % cheaper in
// CPU per packet; a time.Sleep loop, or nanosleep without the yield, does
// not. The likely reason, not proven: each wait returning hands its M back
// through the scheduler, which then finds the goroutines pion's receive
// and write paths just readied without waking a parked thread for each of
// them. It idles (one timer check every 200 ms) once nothing was forwarded
// for a second, so an idle node pays nothing for it.

const (
	schedPollWait  = 5 // ms per epoll_wait
	schedPollIdle  = time.Second
	schedPollCheck = 200 * time.Millisecond
)

// activity moves while the node forwards media: RTP to its subscribers,
// or relay frames arriving at its cascade port (a cascade hop forwards
// without any subscriber here).
func (s *Server) activity() uint64 {
	a := s.forwarded.Load()
	if s.casc.ep != nil {
		a += s.casc.ep.Activity()
	}
	return a
}

// schedPoll runs until ctx is done.
func (s *Server) schedPoll(ctx context.Context) {
	p, err := newPoller()
	if err != nil {
		s.log.Warn("sfu: scheduler poll off", "err", err)
		return
	}
	defer p.close()
	last := s.activity()
	active := time.Now()
	idle := time.NewTimer(schedPollCheck)
	defer idle.Stop()
	for ctx.Err() == nil {
		if cur := s.activity(); cur != last {
			last, active = cur, time.Now()
		}
		if time.Since(active) > schedPollIdle {
			idle.Reset(schedPollCheck)
			select {
			case <-ctx.Done():
				return
			case <-idle.C:
			}
			continue
		}
		p.wait(schedPollWait)
	}
}
