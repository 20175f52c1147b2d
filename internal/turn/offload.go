package turn

import (
	"net/netip"
	"sync"
	"time"
)

// Offloader moves channel-bound flows of UDP clients into a kernel fast
// path (internal/kfast/turnchannel: a tc eBPF program). The server installs
// a flow when its channel is bound, updates its deadline whenever the
// channel, the peer's permission or the allocation is refreshed, and
// removes it when any of them expires or is deleted. Whatever the kernel
// does not carry (no entry, past the deadline, anything but ChannelData and
// the bound peer's datagrams) still reaches the server's sockets, so an
// Offloader that fails or is slow loses nothing.
type Offloader interface {
	// Install adds f (both directions), or updates its deadline: the
	// kernel relays f's packets until then and hands later ones to user
	// space. An error leaves f in user space.
	Install(f OffloadFlow, deadline time.Time) error
	// Remove uninstalls f. Removing a flow not installed is no error.
	Remove(f OffloadFlow) error
	// Counters returns what the kernel relayed for an installed f so far,
	// each direction: packets and data bytes as the server counts them.
	Counters(f OffloadFlow) (toPeer, toClient OffloadCounts, err error)
}

// OffloadFlow is one channel of one allocation of a UDP client: ChannelData
// from Client to Listen on Channel goes from Relayed to Peer, and Peer's
// datagrams to Relayed go to Client from Listen, framed on Channel.
type OffloadFlow struct {
	Client, Listen, Relayed, Peer netip.AddrPort
	Channel                       uint16
}

// OffloadCounts are one direction's kernel counters.
type OffloadCounts struct {
	Packets, Bytes uint64
}

// offState is the server's record of what it has offloaded. Its mutex
// serialises every call into the Offloader, so that an allocation's flows
// are removed before its relay socket closes and never installed after.
type offState struct {
	mu     sync.Mutex // guards everything below and orders Offloader calls
	allocs map[*allocation]*offAlloc
	last   time.Time // last poll
}

// offAlloc is one allocation's offloaded channels.
type offAlloc struct {
	flows        map[uint16]*offFlow
	blockedUntil int64 // unix nanoseconds: over its bandwidth quota in the kernel
}

type offFlow struct {
	f        OffloadFlow
	deadline int64 // unix nanoseconds
	toPeer   OffloadCounts
	toClient OffloadCounts
}

// offloadable reports whether a's channels may go to the kernel: UDP
// clients of an IPv4 listener with a specific address.
func (s *Server) offloadable(a *allocation) bool {
	if s.cfg.Offloader == nil || a.key.proto != protoUDP || a.out.udp == nil {
		return false
	}
	la := s.engs[a.out.shard].laddr.Addr().Unmap()
	return la.Is4() && !la.IsUnspecified() && a.relayed.Addr().Is4()
}

// offloadSync makes the kernel hold exactly a's live channels, each until
// the earliest expiry of the channel, its permission and the allocation.
// It is called whenever one of those changes.
func (s *Server) offloadSync(a *allocation) {
	if !s.offloadable(a) {
		return
	}
	st := &s.off
	st.mu.Lock()
	defer st.mu.Unlock()
	now := time.Now().UnixNano()
	listen := s.engs[a.out.shard].laddr
	type want struct {
		f        OffloadFlow
		deadline int64
	}
	wants := map[uint16]want{}
	oa := st.allocs[a]
	a.mu.Lock()
	if !a.closed && (oa == nil || oa.blockedUntil <= now) {
		for num, ch := range a.chans {
			dl := min(ch.expires, a.perms[ch.peer.Addr()], a.expires)
			if dl <= now {
				continue
			}
			wants[num] = want{OffloadFlow{Client: a.key.client, Listen: listen, Relayed: a.relayed, Peer: ch.peer, Channel: num}, dl}
		}
	}
	a.mu.Unlock()
	if oa == nil {
		if len(wants) == 0 {
			return
		}
		oa = &offAlloc{flows: map[uint16]*offFlow{}}
		st.allocs[a] = oa
	}
	for num, of := range oa.flows {
		if w, ok := wants[num]; !ok || w.f != of.f {
			s.offloadRemoveLocked(oa, num, of)
		}
	}
	for num, w := range wants {
		of := oa.flows[num]
		if of != nil && of.deadline == w.deadline {
			continue
		}
		if err := s.cfg.Offloader.Install(w.f, time.Unix(0, w.deadline)); err != nil {
			s.m.offloadErrors.Inc()
			s.cfg.Log.Debug("turn: channel stays in user space", "client", w.f.Client.String(), "peer", w.f.Peer.String(), "err", err)
			continue
		}
		if of == nil {
			of = &offFlow{f: w.f}
			oa.flows[num] = of
			s.m.offloadFlows.Inc()
		}
		of.deadline = w.deadline
	}
	if len(oa.flows) == 0 && oa.blockedUntil <= now {
		delete(st.allocs, a)
	}
}

// offloadDrop removes every flow of a (deleted). It runs before a's relay
// socket closes, so the kernel never relays for a port another allocation
// may bind next.
func (s *Server) offloadDrop(a *allocation) {
	if s.cfg.Offloader == nil {
		return
	}
	st := &s.off
	st.mu.Lock()
	defer st.mu.Unlock()
	oa := st.allocs[a]
	if oa == nil {
		return
	}
	for num, of := range oa.flows {
		s.offloadRemoveLocked(oa, num, of)
	}
	delete(st.allocs, a)
}

// offloadRemoveLocked counts what the kernel relayed last and removes the
// flow.
func (s *Server) offloadRemoveLocked(oa *offAlloc, num uint16, of *offFlow) {
	s.offloadCollectLocked(of)
	if err := s.cfg.Offloader.Remove(of.f); err != nil {
		s.m.offloadErrors.Inc()
		s.cfg.Log.Warn("turn: offload remove", "err", err)
	}
	delete(oa.flows, num)
	s.m.offloadFlows.Dec()
}

// offloadCollectLocked adds what the kernel relayed for of since the last
// read to the server's counters, and returns the bytes each way.
func (s *Server) offloadCollectLocked(of *offFlow) (up, down uint64) {
	tp, tc, err := s.cfg.Offloader.Counters(of.f)
	if err != nil {
		return 0, 0
	}
	dp, db := tp.Packets-of.toPeer.Packets, tp.Bytes-of.toPeer.Bytes
	cp, cb := tc.Packets-of.toClient.Packets, tc.Bytes-of.toClient.Bytes
	of.toPeer, of.toClient = tp, tc
	if dp > 0 {
		s.m.toPeerPackets.Add(float64(dp))
		s.m.toPeerBytes.Add(float64(db))
		s.m.offloadToPeerPackets.Add(float64(dp))
		s.m.offloadToPeerBytes.Add(float64(db))
	}
	if cp > 0 {
		s.m.toClientPackets.Add(float64(cp))
		s.m.toClientBytes.Add(float64(cb))
		s.m.offloadToClientPackets.Add(float64(cp))
		s.m.offloadToClientBytes.Add(float64(cb))
	}
	return db, cb
}

// offloadPoll reads the kernel counters of every offloaded flow into the
// metrics. With a bandwidth quota, an allocation that relayed more than
// its rate in the kernel since the last poll is handed back to user space
// (whose token bucket then enforces the quota) for offloadBlock.
func (s *Server) offloadPoll(now time.Time) {
	if s.cfg.Offloader == nil {
		return
	}
	st := &s.off
	st.mu.Lock()
	el := now.Sub(st.last)
	st.last = now
	var unblock []*allocation
	for a, oa := range st.allocs {
		var up, down uint64
		for _, of := range oa.flows {
			u, d := s.offloadCollectLocked(of)
			up, down = up+u, down+d
		}
		if rate := s.cfg.BandwidthPerAllocation; rate > 0 && el > 0 && len(oa.flows) > 0 {
			limit := uint64(float64(rate) * el.Seconds())
			if up > limit || down > limit {
				for num, of := range oa.flows {
					s.offloadRemoveLocked(oa, num, of)
				}
				oa.blockedUntil = now.Add(offloadBlock).UnixNano()
				s.m.quotaHits.WithLabelValues("offload_bandwidth").Inc()
			}
		}
		if len(oa.flows) == 0 && oa.blockedUntil != 0 && oa.blockedUntil <= now.UnixNano() {
			oa.blockedUntil = 0
			unblock = append(unblock, a)
		}
	}
	st.mu.Unlock()
	for _, a := range unblock {
		s.offloadSync(a)
	}
}

// offloadBlock is how long an allocation over its bandwidth quota stays in
// user space before its channels go back to the kernel.
const offloadBlock = 10 * time.Second
