package sfu

import (
	"context"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// drainGrace is how long after a drain's period the node waits for the
// last sessions to move before it closes them itself: a signal server
// that is gone cannot relay the rejoin, and a client that never rejoins
// must not keep the node up forever.
const drainGrace = 5 * time.Second

// drainState is a node's drain (docs/failover.md): once on, the node
// announces draining, refuses joins, asks its sessions to rejoin
// elsewhere one at a time over the period, and, unless DrainStay, makes
// Run return once the last session has left.
type drainState struct {
	on        atomic.Bool
	empty     chan struct{} // closed once draining with no session left
	emptyOnce sync.Once

	mu     sync.Mutex // guards cancel
	cancel context.CancelFunc
	wg     sync.WaitGroup // the pacing goroutine
}

// lastLeft is called, with the server's lock held, when the node has no
// session left.
func (d *drainState) lastLeft(stay bool) {
	if d.on.Load() && !stay {
		d.emptyOnce.Do(func() { close(d.empty) })
	}
}

// stop ends the pacing goroutine and waits for it (Close).
func (d *drainState) stop() {
	d.mu.Lock()
	if d.cancel != nil {
		d.cancel()
	}
	d.mu.Unlock()
	d.wg.Wait()
}

// Draining reports whether the node is draining (its /readyz is then
// false: a load balancer sends it nothing new).
func (s *Server) Draining() bool { return s.drain.on.Load() }

// Drain starts draining the node: no new sessions; every session is asked
// to rejoin elsewhere (a bus SessionRejoin message, reason drain, which
// signal turns into the client's rejoin message), spread evenly over
// period (zero: Config.DrainPeriod); sessions still here drainGrace after
// the period are closed. A second call does nothing.
func (s *Server) Drain(period time.Duration) {
	if period <= 0 {
		period = s.cfg.DrainPeriod
	}
	s.mu.Lock()
	if s.closed || !s.drain.on.CompareAndSwap(false, true) {
		s.mu.Unlock()
		return
	}
	parts := slices.Collect(maps.Values(s.sessions))
	if len(parts) == 0 {
		s.drain.lastLeft(s.cfg.DrainStay)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.drain.mu.Lock()
	s.drain.cancel = cancel
	s.drain.mu.Unlock()
	s.mu.Unlock()
	s.m.drains.Inc()
	s.log.Info("sfu: draining", "node", s.cfg.NodeID, "sessions", len(parts), "period", period)
	s.announce(0) // signal servers stop placing sessions here now, not in one interval
	s.drain.wg.Add(1)
	go func() {
		defer s.drain.wg.Done()
		s.paceDrain(ctx, parts, period)
	}()
}

// paceDrain sends each session its rejoin at its moment of the period,
// then closes what is left after the grace.
func (s *Server) paceDrain(ctx context.Context, parts []*participant, period time.Duration) {
	start := time.Now()
	t := time.NewTimer(0)
	defer t.Stop()
	wait := func(at time.Time) bool {
		t.Reset(time.Until(at))
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	for i, p := range parts {
		if !wait(start.Add(period * time.Duration(i) / time.Duration(len(parts)))) {
			return
		}
		if !s.hasSession(p) {
			continue
		}
		err := s.bus.PublishSession(s.cfg.NodeID, bus.SessionMessage{Type: bus.SessionRejoin, Session: p.id, Reason: bus.RejoinDrain})
		if err != nil {
			s.log.Warn("sfu: drain: rejoin message", "session", p.id, "err", err)
			continue
		}
		s.m.drainRejoins.Inc()
	}
	if !wait(start.Add(period + drainGrace)) {
		return
	}
	for _, p := range parts {
		if s.hasSession(p) {
			s.m.drainForced.Inc()
			p.leave("node drained")
		}
	}
}

func (s *Server) hasSession(p *participant) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[p.id] == p
}
