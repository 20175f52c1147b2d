package signal

import (
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// downHold is how long a node declared dead stays out of placement even if
// it announces again: long enough that a node a controller declared dead
// while its last announcements are still in the table (up to
// bus.NodeExpiry) is not chosen by the very clients that are leaving it;
// short enough that a restarted node of the same id takes sessions again
// a few seconds later.
const downHold = bus.NodeExpiry + time.Second

// NodeDown is how the server learns that an SFU node died (its
// announcements stopped: BusBackend's sweeper; or a controller's NodeDown
// bus message). Every client whose session lives on node gets
// {"type":"rejoin","reason":reason} (RejoinNodeFailed unless reason is
// RejoinDrain), its session there is forgotten, and the room places of
// node are dropped, so the first client of a room to rejoin picks its new
// node and the others follow it. node is not chosen again for downHold.
// docs/failover.md.
func (s *Server) NodeDown(node, reason string) {
	if reason != RejoinDrain {
		reason = RejoinNodeFailed
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.down[node] = s.cfg.Now().Add(downHold)
	for room, p := range s.rooms {
		if p.node == node {
			delete(s.rooms, room)
		}
	}
	s.mu.Unlock()
	// The joined sessions on node are in the room registry (roomapi.go),
	// which every join enters and every leave and rejoin leaves.
	sessions := s.reg.sessionsOn(node)
	s.m.nodesDown.Inc()
	n := 0
	for _, ss := range sessions {
		if ss.rejoin(node, reason) {
			n++
		}
	}
	s.log.Warn("signal: sfu node down", "node", node, "reason", reason, "sessions", n)
}

// upLocked returns nodes without those declared dead within downHold.
func (s *Server) upLocked(nodes []Node) []Node {
	if len(s.down) == 0 {
		return nodes
	}
	now := s.cfg.Now()
	out := nodes[:0:0]
	for _, n := range nodes {
		if until, ok := s.down[n.ID]; ok {
			if now.Before(until) {
				continue
			}
			delete(s.down, n.ID)
		}
		out = append(out, n)
	}
	return out
}

// rejoin drops the session's place on node, if it is there, and tells the
// client to join again: on the same WebSocket, with the same token. It
// reports whether the session was on node.
func (ss *session) rejoin(node, reason string) bool {
	ss.mu.Lock()
	if !ss.joined || ss.node.ID != node {
		ss.mu.Unlock()
		return false
	}
	link, room, pid := ss.link, ss.claims.Room, ss.pid
	ss.link, ss.joined = nil, false
	ss.mu.Unlock()
	ss.s.unplace(room, node)
	// The participant leaves the room API's registry now (its webhook says
	// why); its join on the next node enters it again with a new id.
	ss.s.apiLeftBecause(room, pid, "rejoin: "+reason)
	if link != nil {
		// Leaving a dead node waits for its request timeout: not on the
		// client's time.
		ss.s.wg.Add(1)
		go func() {
			defer ss.s.wg.Done()
			_ = link.Close()
		}()
	}
	ss.s.m.rejoins.WithLabelValues(reason).Inc()
	ss.s.log.Info("signal: rejoin", "node", node, "reason", reason, "room", room, "client", ss.client)
	ss.send(ServerMessage{Type: TypeRejoin, Reason: reason}, true)
	return true
}
