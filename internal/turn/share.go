package turn

import (
	"net/netip"
	"sync/atomic"
)

// relaySock is one relay socket: an allocation's own, or, once the relay
// port range is used up, shared by several allocations (coturn's
// multiplex-peer idea). A shared socket tells its allocations apart by the
// source of each arriving packet: the peer IP that one of them has a
// permission for. Two sharers may not permit the same peer IP (403), so
// the source is never ambiguous.
type relaySock struct {
	fd   int
	addr netip.AddrPort
	eng  *engine

	// Guarded by Server.mu.
	users  int
	single *allocation // the one user of an unshared socket
	shared bool
	owners map[netip.Addr]*allocation // shared: peer IP -> the sharer permitting it
}

// owner returns the allocation a packet from peer on rs belongs to. s.mu
// must not be held.
func (s *Server) owner(rs *relaySock, peer netip.Addr) *allocation {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !rs.shared {
		return rs.single
	}
	return rs.owners[peer]
}

// shareRelay picks an existing relay socket for a new allocation when the
// port range is exhausted: the least shared one served by e (or by any
// engine when e has none).
func (s *Server) shareRelayLocked(e *engine) *relaySock {
	var best *relaySock
	for _, rs := range s.byRelay {
		if best == nil || (rs.eng == e && best.eng != e) || (rs.eng == best.eng && rs.users < best.users) {
			best = rs
		}
	}
	if best == nil {
		return nil
	}
	if !best.shared {
		// Turn it into a shared socket: its allocation's permissions
		// become owner entries.
		best.shared = true
		best.owners = map[netip.Addr]*allocation{}
		if a := best.single; a != nil {
			a.mu.Lock()
			for ip := range a.perms {
				best.owners[ip] = a
			}
			a.mu.Unlock()
		}
		best.single = nil
	}
	best.users++
	return best
}

// claimPeers records a as the owner of ips on its shared socket. It fails,
// recording nothing, when another sharer owns one of them.
func (s *Server) claimPeers(a *allocation, ips []netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := a.sock
	if rs == nil || !rs.shared || a.dead.Load() {
		return true
	}
	for _, ip := range ips {
		if o := rs.owners[ip]; o != nil && o != a {
			return false
		}
	}
	for _, ip := range ips {
		rs.owners[ip] = a
	}
	return true
}

// releasePeers drops a's owner entries for ips (expired permissions).
func (s *Server) releasePeers(a *allocation, ips []netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := a.sock
	if rs == nil || !rs.shared {
		return
	}
	for _, ip := range ips {
		if rs.owners[ip] == a {
			delete(rs.owners, ip)
		}
	}
}

// deadFlag is set once an allocation is deleted, readable under Server.mu
// without the allocation's own lock.
type deadFlag = atomic.Bool
