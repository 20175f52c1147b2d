package mediaproxy

import "time"

// janitor advances the coarse clock, reads kernel counters and ends calls
// whose media stopped.
func (p *Proxy) janitor() {
	defer p.wg.Done()
	t := time.NewTicker(p.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case now := <-t.C:
			p.now.Store(now.UnixNano())
			p.sweep(now.UnixNano())
		}
	}
}

func (p *Proxy) sweep(now int64) {
	p.mu.RLock()
	var offloaded []*stream
	type callState struct {
		last   int64
		active bool
	}
	calls := make(map[string]callState, len(p.calls))
	for id, c := range p.calls {
		var cs callState
		for _, s := range c {
			if s.offload.Load() == offloadDone {
				offloaded = append(offloaded, s)
			}
			if l := s.last.Load(); l > cs.last {
				cs.last = l
			}
			if s.last.Load() != s.created {
				cs.active = true
			}
		}
		calls[id] = cs
	}
	p.mu.RUnlock()
	var kernel uint64
	for _, s := range offloaded {
		pk, _, err := p.cfg.Offloader.Stats(s.flow)
		if err != nil {
			continue
		}
		kernel += pk
		if pk != s.kernelPkts.Swap(pk) {
			s.last.Store(now)
			if cs, ok := calls[s.callID]; ok {
				cs.last, cs.active = now, true
				calls[s.callID] = cs
			}
		}
	}
	p.c.KernelPackets.Store(kernel)
	for id, cs := range calls {
		limit := p.cfg.MediaTimeout
		if !cs.active {
			limit = p.cfg.SetupTimeout
		}
		if time.Duration(now-cs.last) < limit {
			continue
		}
		if p.DeleteCall(id) == nil {
			p.c.Timeouts.Add(1)
			p.log.Info("call ended: no media", "call", id, "after", limit)
			if f := *p.onTimeout.Load(); f != nil {
				f(id)
			}
		}
	}
}
