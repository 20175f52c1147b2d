package sfu

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"net"
	"sync"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// A balanced group (Config.Group; docs/cascade.md, "Behind a UDP load
// balancer") is a set of nodes that share one public address behind an L4
// balancer, which hashes each client's UDP 5-tuple to one of them. Signal
// sends a session's join to every node of the group with the ICE
// credentials it chose (bus.Join.ICE); every node answers with them and the
// group's certificate (the same on every node, derived from the cascade
// secret), so the one answer the client gets is valid wherever its packets
// land. Each node holds the session unjoined (pending). The node whose
// socket receives the session's first STUN binding claims it
// (bus.SessionClaim); signal names the first claimant the winner
// (bus.RequestClaimed): that node joins the room, and the rest of the
// room is reached through the cascade. The others drop the session
// (bus.RequestLeave, or after groupPendingTTL).
//
// On a group node the gate (groupGate) sits between the socket and pion's
// ICE mux: a binding request for a ufrag the node serves passes; one for a
// pending session starts the claim and is dropped (the client sends it
// again); one for a session the node lost, or for a ufrag it never heard
// of, is dropped and counted. Without a group nothing of this runs.

// groupPendingTTL is how long a node keeps a session it was offered but
// did not win: the client's first binding comes within a few seconds of
// the answer, or never.
const groupPendingTTL = 30 * time.Second

// groupReclaim is how long a node waits for signal's verdict on its claim
// before it claims again (on the client's next binding).
const groupReclaim = time.Second

// entry states.
const (
	entryPending  = iota // offered, no binding seen
	entryClaiming        // claim sent, no verdict
	entryServed          // the node serves it
)

// groupEntry is one session the group node holds.
type groupEntry struct {
	p       *participant
	ufrag   string
	state   int
	at      time.Time // offered
	claimAt time.Time // the last claim sent
}

// groupState is a node's balanced group; cert is nil when the node is in
// none.
type groupState struct {
	cert *webrtc.Certificate

	mu        sync.Mutex // guards byUfrag, bySession
	byUfrag   map[string]*groupEntry
	bySession map[string]*groupEntry

	// dropped counts binding requests the gate dropped, by reason:
	// unknown (no session has the ufrag), claiming (the claim is on its
	// way), lost (another node serves it). claims counts claims by
	// result: sent, won, lost (signal named another node), expired.
	dropped, claims *prometheus.CounterVec
}

// openGroup derives the group's certificate and declares its counters.
func (s *Server) openGroup() error {
	if s.cfg.Group == "" {
		return nil
	}
	cert, err := GroupCertificate(s.cfg.CascadeSecret, s.cfg.Group)
	if err != nil {
		return err
	}
	g := &s.grp
	g.cert = &cert
	g.byUfrag, g.bySession = map[string]*groupEntry{}, map[string]*groupEntry{}
	g.dropped = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "traverse", Subsystem: "sfu", Name: "group_stun_dropped_total",
		Help: "STUN binding requests a balanced group node dropped, by reason (unknown: no session has the ufrag; claiming: the claim is on its way; lost: another node serves the session)."},
		[]string{"reason"})
	g.claims = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "traverse", Subsystem: "sfu", Name: "group_claims_total",
		Help: "Balanced group sessions by claim result (sent: a claim published; won; lost: signal named another node; expired: offered and never claimed)."},
		[]string{"result"})
	if r := s.cfg.Registerer; r != nil {
		for _, c := range []prometheus.Collector{g.dropped, g.claims} {
			if err := r.Register(c); err != nil {
				return err
			}
		}
	}
	return nil
}

// GroupCertificate is the DTLS certificate every node of group answers
// with: an ECDSA P-256 key and a self-signed certificate, both derived
// from the cascade secret and the group's name (HKDF-SHA256; the
// signature is RFC 6979's deterministic one), so every node makes the same
// certificate and the same fingerprint with nothing exchanged.
func GroupCertificate(secret []byte, group string) (webrtc.Certificate, error) {
	if len(secret) < 32 || group == "" {
		return webrtc.Certificate{}, fmt.Errorf("%w: a group needs a name and the cascade secret", ErrConfig)
	}
	var key *ecdsa.PrivateKey
	for i := 0; key == nil; i++ {
		if i == 16 {
			return webrtc.Certificate{}, errors.New("sfu: group key derivation failed")
		}
		b, err := hkdf.Key(sha256.New, secret, nil, fmt.Sprintf("traverse group certificate key %d %s", i, group), 32)
		if err != nil {
			return webrtc.Certificate{}, err
		}
		key, _ = ecdsa.ParseRawPrivateKey(elliptic.P256(), b) // fails only for a scalar >= n or 0
	}
	sn, err := hkdf.Key(sha256.New, secret, nil, "traverse group certificate serial "+group, 16)
	if err != nil {
		return webrtc.Certificate{}, err
	}
	sn[0] &= 0x7f
	tpl := x509.Certificate{
		SerialNumber: new(big.Int).SetBytes(sn),
		Subject:      pkix.Name{CommonName: "traverse group " + group},
		NotBefore:    time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2125, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	// A nil random source: the ECDSA signature is deterministic.
	der, err := x509.CreateCertificate(nil, &tpl, &tpl, &key.PublicKey, key)
	if err != nil {
		return webrtc.Certificate{}, fmt.Errorf("sfu: group certificate: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return webrtc.Certificate{}, err
	}
	return webrtc.CertificateFromX509(key, c), nil
}

// pcConfig is the configuration of p's peer connection: a group session's
// carries the group's certificate.
func (s *Server) pcConfig(p *participant) webrtc.Configuration {
	if p.ice == nil {
		return webrtc.Configuration{}
	}
	return webrtc.Configuration{Certificates: []webrtc.Certificate{*s.grp.cert}}
}

// setICE puts a group session's ICE credentials into se, and keeps it on
// UDP: the gate watches the UDP socket only, so a group session offers no
// ICE-TCP candidate.
func setICE(se *webrtc.SettingEngine, p *participant) {
	if p.ice != nil {
		se.SetICECredentials(p.ice.Ufrag, p.ice.Pwd)
		se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4, webrtc.NetworkTypeUDP6})
	}
}

// joinGroup takes a balanced group's join: it answers with the join's ICE
// credentials and the group's certificate and holds the session pending
// until a binding request claims it and signal confirms the claim.
func (s *Server) joinGroup(ctx context.Context, req bus.Request) (bus.Reply, error) {
	j := req.Join
	g := &s.grp
	if g.cert == nil {
		return bus.Reply{}, bus.Errorf(bus.StatusBadRequest, "node %s is in no balanced group", s.cfg.NodeID)
	}
	s.mu.Lock()
	busy := s.closed || s.Draining() || s.sessions[req.Session] != nil || len(s.sessions) >= s.cfg.MaxPeers
	s.mu.Unlock()
	if busy {
		return bus.Reply{}, bus.Errorf(bus.StatusUnavailable, "node %s takes no session %s", s.cfg.NodeID, req.Session)
	}
	g.mu.Lock()
	if g.bySession[req.Session] != nil || g.byUfrag[j.ICE.Ufrag] != nil || len(g.bySession) >= 2*s.cfg.MaxPeers {
		g.mu.Unlock()
		return bus.Reply{}, bus.Errorf(bus.StatusConflict, "session %s or its ufrag is held", req.Session)
	}
	// The room is the node's own only once the session is claimed
	// (serveClaimed); until then it is a detached one of the same name.
	p := newParticipant(s, newRoom(s, j.Room), req.Session, j)
	e := &groupEntry{p: p, ufrag: j.ICE.Ufrag, at: time.Now()}
	g.bySession[req.Session], g.byUfrag[e.ufrag] = e, e
	g.mu.Unlock()
	answer, err := p.start(ctx, j.Offer)
	if err != nil {
		s.dropPending(req.Session)
		return bus.Reply{}, err
	}
	return bus.Reply{SDP: answer}, nil
}

// serveClaimed makes a pending session the node's own: signal named this
// node the winner of its claim.
func (s *Server) serveClaimed(req bus.Request) (bus.Reply, error) {
	g := &s.grp
	g.mu.Lock()
	e := g.bySession[req.Session]
	if e == nil || e.state == entryServed {
		g.mu.Unlock()
		return bus.Reply{}, bus.Errorf(bus.StatusNotFound, "no pending session %s on node %s", req.Session, s.cfg.NodeID)
	}
	g.mu.Unlock()
	p := e.p
	s.mu.Lock()
	if s.closed || s.sessions[p.id] != nil {
		s.mu.Unlock()
		return bus.Reply{}, bus.Errorf(bus.StatusConflict, "session %s: node %s cannot take it", p.id, s.cfg.NodeID)
	}
	r := s.rooms[p.room.name]
	if r == nil {
		r = newRoom(s, p.room.name)
		s.rooms[r.name] = r
		s.attachRemotesLocked(r)
	}
	p.negMu.Lock()
	p.room = r
	p.negMu.Unlock()
	s.sessions[p.id] = p
	r.mu.Lock()
	r.parts[p.id] = p
	r.mu.Unlock()
	s.mu.Unlock()
	g.mu.Lock()
	e.state = entryServed
	g.mu.Unlock()
	g.claims.WithLabelValues("won").Inc()
	s.m.joins.Inc()
	p.announce()
	return bus.Reply{After: p.joined}, nil
}

// servedUfrag records a session a group node serves by a plain join (its
// own ufrag), so that the gate lets its bindings through.
func (s *Server) servedUfrag(p *participant) {
	g := &s.grp
	if g.cert == nil || p.ufrag == "" {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.bySession[p.id] == nil && g.byUfrag[p.ufrag] == nil {
		e := &groupEntry{p: p, ufrag: p.ufrag, state: entryServed, at: time.Now()}
		g.bySession[p.id], g.byUfrag[p.ufrag] = e, e
	}
}

// forgetGroup drops p's entry when it leaves.
func (s *Server) forgetGroup(p *participant) {
	g := &s.grp
	if g.cert == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if e := g.bySession[p.id]; e != nil && e.p == p {
		delete(g.bySession, p.id)
		delete(g.byUfrag, e.ufrag)
	}
}

// pending returns the session's participant while it is pending (not
// served), else nil.
func (s *Server) pending(session string) *participant {
	g := &s.grp
	if g.cert == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if e := g.bySession[session]; e != nil && e.state != entryServed {
		return e.p
	}
	return nil
}

// dropPending discards a pending session (signal gave it to another node,
// or the join failed); true when there was one.
func (s *Server) dropPending(session string) bool {
	g := &s.grp
	g.mu.Lock()
	e := g.bySession[session]
	if e == nil || e.state == entryServed {
		g.mu.Unlock()
		return false
	}
	delete(g.bySession, session)
	delete(g.byUfrag, e.ufrag)
	claimed := e.state == entryClaiming
	g.mu.Unlock()
	if claimed {
		g.claims.WithLabelValues("lost").Inc()
	}
	e.p.discard()
	return true
}

// expireGroup discards the sessions offered more than groupPendingTTL ago
// and never served.
func (s *Server) expireGroup(now time.Time) {
	g := &s.grp
	if g.cert == nil {
		return
	}
	ttl := s.cfg.pendingTTL
	if ttl == 0 {
		ttl = groupPendingTTL
	}
	var old []string
	g.mu.Lock()
	for id, e := range g.bySession {
		if e.state != entryServed && now.Sub(e.at) > ttl {
			old = append(old, id)
		}
	}
	g.mu.Unlock()
	for _, id := range old {
		if s.dropPending(id) {
			g.claims.WithLabelValues("expired").Inc()
		}
	}
}

// closeGroup discards every pending session (the node is stopping).
func (s *Server) closeGroup() {
	g := &s.grp
	if g.cert == nil {
		return
	}
	var ids []string
	g.mu.Lock()
	for id, e := range g.bySession {
		if e.state != entryServed {
			ids = append(ids, id)
		}
	}
	g.mu.Unlock()
	for _, id := range ids {
		s.dropPending(id)
	}
}

// admit is the gate's verdict on one datagram: true passes it to pion's
// mux. Only STUN binding requests are looked at.
func (s *Server) admit(b []byte) bool {
	ufrag, ok := stunUfrag(b)
	if !ok {
		return true
	}
	g := &s.grp
	g.mu.Lock()
	e := g.byUfrag[string(ufrag)]
	switch {
	case e == nil:
		g.mu.Unlock()
		g.dropped.WithLabelValues("unknown").Inc()
		return false
	case e.state == entryServed:
		g.mu.Unlock()
		return true
	case e.state == entryClaiming && time.Since(e.claimAt) < groupReclaim:
		g.mu.Unlock()
		g.dropped.WithLabelValues("claiming").Inc()
		return false
	}
	e.state, e.claimAt = entryClaiming, time.Now()
	id := e.p.id
	g.mu.Unlock()
	// The claim is one small publish (buffered by the bus client); the
	// binding itself is dropped: the client repeats it, and by then the
	// verdict has come.
	if err := s.bus.PublishSession(s.cfg.NodeID, bus.SessionMessage{Type: bus.SessionClaim, Session: id}); err != nil {
		s.log.Warn("sfu: group claim", "session", id, "err", err)
	}
	g.claims.WithLabelValues("sent").Inc()
	g.dropped.WithLabelValues("claiming").Inc()
	return false
}

// stunUfrag returns the local (first) part of the USERNAME of a STUN
// binding request (RFC 8489; RFC 8445 section 7.2.2: "RFRAG:LFRAG", the
// receiver's ufrag first); ok is false for anything that is not a
// well-formed binding request with a USERNAME. It does not allocate.
func stunUfrag(b []byte) (ufrag []byte, ok bool) {
	const header, cookie = 20, 0x2112A442
	if len(b) < header || binary.BigEndian.Uint16(b) != 0x0001 || binary.BigEndian.Uint32(b[4:]) != cookie {
		return nil, false
	}
	n := int(binary.BigEndian.Uint16(b[2:]))
	if n%4 != 0 || header+n > len(b) {
		return nil, false
	}
	attrs := b[header : header+n]
	for len(attrs) >= 4 {
		typ, l := binary.BigEndian.Uint16(attrs), int(binary.BigEndian.Uint16(attrs[2:]))
		if 4+l > len(attrs) {
			return nil, false
		}
		if typ == 0x0006 { // USERNAME
			v := attrs[4 : 4+l]
			for i, c := range v {
				if c == ':' {
					return v[:i], i > 0
				}
			}
			return nil, false
		}
		attrs = attrs[min(len(attrs), 4+(l+3)&^3):]
	}
	return nil, false
}

// groupGate is the packet conn under pion's ICE mux on a group node: it
// drops what admit refuses.
type groupGate struct {
	net.PacketConn
	s *Server
}

func (c groupGate) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.PacketConn.ReadFrom(b)
		if err != nil || c.s.admit(b[:n]) {
			return n, addr, err
		}
	}
}
