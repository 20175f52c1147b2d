package relay

// Block takes the link to peer id out of service (blocked true) or puts it
// back: every frame to or from the peer is dropped and counted
// (traverse_relay_dropped_total{reason="blocked"}). The prober then sees
// the link down, the node reports it, and the controller's routes move off
// it. For an operator taking a link out of service by hand, and for tests
// of routing around a dead link. It holds across SetPeers.
func (e *Endpoint) Block(id NodeID, blocked bool) {
	e.peerMu.Lock()
	defer e.peerMu.Unlock()
	if e.blocked == nil {
		e.blocked = map[NodeID]bool{}
	}
	if blocked {
		e.blocked[id] = true
	} else {
		delete(e.blocked, id)
	}
	if p := (*e.peers.Load())[id]; p != nil {
		p.blocked.Store(blocked)
	}
}
