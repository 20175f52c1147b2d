package signal

// Peer-to-peer rooms (docs/signal.md, "Peer-to-peer rooms"). With
// Config.P2P a room of exactly two participants sends its media browser to
// browser: signal relays the two browsers' own offers, answers and ICE
// candidates (p2p-offer, p2p-answer, p2p-candidate) between them and hands
// them the ICE servers (traverse STUN, then TURN with minted credentials)
// in joined. When a third joins, every member is told {"type":"mode",
// "mode":"sfu"} and publishes to the room's SFU node through the ordinary
// offer path; when the room is down to two again, the two are told
// {"type":"mode","mode":"p2p"} and connect to each other again. The
// clients make before they break: the old path is closed only once both
// decode the other on the new one (web/traverse.js agrees on that over the
// peer connection's data channel), and then a client back in P2P sends
// sfu-release, on which signal ends its session on the node (the node
// stops forwarding) and opens a fresh, unoffered one for the next move.
//
// Every session keeps its place on a node either way, so a move into the
// SFU costs no placement. The mode is a server-wide setting (the flag
// --p2p): a room's mode is a function of its member count on this signal
// process. Rooms spread over several signal processes see only their
// local members (the registry is per process); docs/signal.md says so.

import (
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Peer-to-peer message types (docs/signal.md). p2p-offer, p2p-answer and
// p2p-candidate travel client to server to the other client, which sees
// From; mode and sfu-release are server to client and client to server.
const (
	TypeP2POffer     = "p2p-offer"
	TypeP2PAnswer    = "p2p-answer"
	TypeP2PCandidate = "p2p-candidate"
	TypeSFURelease   = "sfu-release"
	TypeMode         = "mode"
)

// Room modes (ServerMessage.Mode).
const (
	ModeP2P = "p2p"
	ModeSFU = "sfu"
)

// isP2PType reports whether typ is one of the peer-to-peer client types.
func isP2PType(typ string) bool {
	switch typ {
	case TypeP2POffer, TypeP2PAnswer, TypeP2PCandidate, TypeSFURelease:
		return true
	}
	return false
}

// validateP2P checks a peer-to-peer client message: the same bounds as the
// SFU's offer, answer and candidate (maxSDPLen, maxCandidateLen).
func (m *ClientMessage) validateP2P() error {
	switch m.Type {
	case TypeP2POffer, TypeP2PAnswer:
		if m.SDP == "" || len(m.SDP) > maxSDPLen {
			return fmt.Errorf("%w: %s needs sdp of at most %d bytes", ErrMessage, m.Type, maxSDPLen)
		}
		if _, err := ParseOffer(m.SDP); err != nil {
			return fmt.Errorf("%w: %w", ErrMessage, err)
		}
	case TypeP2PCandidate:
		if m.Candidate == nil {
			return fmt.Errorf("%w: p2p-candidate needs candidate", ErrMessage)
		}
		if len(m.Candidate.Candidate) > maxCandidateLen || len(m.Candidate.UsernameFragment) > 256 ||
			m.Candidate.SDPMid != nil && len(*m.Candidate.SDPMid) > 64 {
			return fmt.Errorf("%w: candidate too long", ErrMessage)
		}
		if m.Candidate.Candidate != "" {
			if _, err := ParseCandidate(m.Candidate.Candidate); err != nil {
				return fmt.Errorf("%w: %w", ErrMessage, err)
			}
		}
	}
	return nil
}

// p2pMetrics count the peer-to-peer mode's work.
type p2pMetrics struct {
	relayed *prometheus.CounterVec // by type
	refused *prometheus.CounterVec // by reason
	modes   *prometheus.CounterVec // mode changes by mode
	relinks prometheus.Counter
}

func newP2PMetrics(reg prometheus.Registerer) (*p2pMetrics, error) {
	m := &p2pMetrics{
		relayed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_signal_p2p_relayed_total",
			Help: "Peer-to-peer offers, answers and candidates relayed to the other member of a two-person room, by type."},
			[]string{"type"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_signal_p2p_refused_total",
			Help: "Peer-to-peer messages refused, by reason (disabled, not_p2p: the room is not in P2P mode or has no peer)."},
			[]string{"reason"}),
		modes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_signal_p2p_mode_changes_total",
			Help: "Rooms that moved to a mode (p2p: down to two members; sfu: a third joined)."}, []string{"mode"}),
		relinks: prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_signal_p2p_sfu_releases_total",
			Help: "SFU sessions ended because their room went back to P2P (sfu-release)."}),
	}
	for _, r := range []string{"disabled", "not_p2p"} {
		m.refused.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.relayed, m.refused, m.modes, m.relinks} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// p2pRoomSet is the peer-to-peer state of this process's rooms.
type p2pRoomSet struct {
	mu    sync.Mutex // guards rooms
	rooms map[string]*p2pRoom
}

type p2pRoom struct {
	sfu     bool         // the room is in SFU mode
	members []*p2pMember // in join order: the first is the P2P offerer
}

type p2pMember struct {
	ss *session
	p  Participant
}

// p2pJoined adds a joined session to its room and tells the members the
// room's mode when it changes (and the new member in any case).
func (s *Server) p2pJoined(ss *session, pid string, c Claims) {
	if !s.cfg.P2P {
		return
	}
	s.pairs.mu.Lock()
	defer s.pairs.mu.Unlock()
	if s.pairs.rooms == nil {
		s.pairs.rooms = map[string]*p2pRoom{}
	}
	r := s.pairs.rooms[c.Room]
	if r == nil {
		r = &p2pRoom{}
		s.pairs.rooms[c.Room] = r
	}
	r.members = append(r.members, &p2pMember{ss: ss, p: Participant{ID: pid, Identity: c.Identity}})
	switch {
	case len(r.members) > 2 && !r.sfu:
		r.sfu = true
		s.p2pm.modes.WithLabelValues(ModeSFU).Inc()
		s.p2pTellLocked(r)
	case len(r.members) > 2:
		s.p2pTellOneLocked(r, len(r.members)-1)
	default:
		s.p2pTellLocked(r)
	}
}

// p2pLeft removes a session from its room; a room down to two goes back
// to P2P, and the one left alone is told it has no peer.
func (s *Server) p2pLeft(room, pid string) {
	if !s.cfg.P2P {
		return
	}
	s.pairs.mu.Lock()
	defer s.pairs.mu.Unlock()
	r := s.pairs.rooms[room]
	if r == nil {
		return
	}
	for i, m := range r.members {
		if m.p.ID == pid {
			r.members = append(r.members[:i], r.members[i+1:]...)
			break
		}
	}
	switch {
	case len(r.members) == 0:
		delete(s.pairs.rooms, room)
	case len(r.members) <= 2:
		if r.sfu {
			r.sfu = false
			s.p2pm.modes.WithLabelValues(ModeP2P).Inc()
		}
		s.p2pTellLocked(r)
	}
}

// p2pTellLocked sends every member the room's mode.
func (s *Server) p2pTellLocked(r *p2pRoom) {
	for i := range r.members {
		s.p2pTellOneLocked(r, i)
	}
}

// p2pTellOneLocked sends member i the room's mode: sfu, or p2p with its
// peer (none when alone) and whether it makes the offer.
func (s *Server) p2pTellOneLocked(r *p2pRoom, i int) {
	m := ServerMessage{Type: TypeMode, Mode: ModeSFU}
	if !r.sfu {
		m.Mode = ModeP2P
		if len(r.members) == 2 {
			peer := r.members[1-i].p
			m.Peer = &peer
			m.Initiator = i == 0
		}
	}
	r.members[i].ss.send(m, true)
}

// p2pPeerLocked returns the other member of ss's room when the room is in
// P2P mode with two members.
func (s *Server) p2pPeerLocked(room, pid string) (*p2pMember, bool) {
	r := s.pairs.rooms[room]
	if r == nil || r.sfu || len(r.members) != 2 {
		return nil, false
	}
	switch pid {
	case r.members[0].p.ID:
		return r.members[1], true
	case r.members[1].p.ID:
		return r.members[0], true
	}
	return nil, false
}

// handleP2P relays a peer-to-peer message to the other member of the
// sender's room, or releases the sender's SFU session. Only the two members
// of a room in P2P mode reach each other: the room and participant ids
// come from the sender's verified token and session, never from the
// message.
func (ss *session) handleP2P(m ClientMessage) error {
	s := ss.s
	if !s.cfg.P2P {
		s.p2pm.refused.WithLabelValues("disabled").Inc()
		return fmt.Errorf("%w: this server runs no peer-to-peer rooms", ErrState)
	}
	ss.mu.Lock()
	room, pid, pub := ss.claims.Room, ss.pid, ss.claims.Publish
	ss.mu.Unlock()
	s.pairs.mu.Lock()
	peer, ok := s.p2pPeerLocked(room, pid)
	s.pairs.mu.Unlock()
	if !ok {
		s.p2pm.refused.WithLabelValues("not_p2p").Inc()
		return fmt.Errorf("%w: %s while the room is not peer to peer", ErrState, m.Type)
	}
	if m.Type == TypeSFURelease {
		return ss.releaseSFU()
	}
	if (m.Type == TypeP2POffer || m.Type == TypeP2PAnswer) && !pub {
		if o, err := ParseOffer(m.SDP); err == nil && o.Sends {
			return fmt.Errorf("%w: the token does not allow publishing (%s sends media)", ErrForbidden, m.Type)
		}
	}
	s.p2pm.relayed.WithLabelValues(m.Type).Inc()
	// Not critical for the receiver: a peer too slow to take its own
	// signaling loses this message (counted), not its session.
	peer.ss.send(ServerMessage{Type: m.Type, From: pid, SDP: m.SDP, Candidate: m.Candidate}, false)
	return nil
}

// releaseSFU ends the session's place in the room on its SFU node (the
// client went back to P2P and closed its SFU peer connection) and opens a
// fresh link on the same node under the same participant id, so that a
// later move into the SFU is an ordinary first offer.
func (ss *session) releaseSFU() error {
	ss.mu.Lock()
	old, node, claims, pid := ss.link, ss.node, ss.claims, ss.pid
	ss.link = nil
	ss.mu.Unlock()
	if old == nil {
		return nil
	}
	ss.s.p2pm.relinks.Inc()
	// The node's closing of the old session is not the end of this one.
	ss.relinking.Store(true)
	_ = old.Close()
	ss.relinking.Store(false)
	link, err := ss.joinNode(node, claims, pid)
	if err != nil {
		return ss.nodeError(err)
	}
	ss.mu.Lock()
	ss.link = link
	ss.mu.Unlock()
	return nil
}
