package sfu

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// participant is one session: one peer connection on which the client
// publishes its tracks and receives everyone else's.
type participant struct {
	s        *Server
	room     *room
	id       string
	identity string
	name     string
	canPub   bool
	canSub   bool
	pc       *webrtc.PeerConnection
	ufrag    string
	// ice is set for a balanced group's session (group.go): the peer
	// connection answers with these credentials and the group's
	// certificate.
	ice      *bus.ICECredentials
	own      *ownPath // nil unless DataPathOwn; set at creation
	joinedAt time.Time

	negMu sync.Mutex // guards the fields below and serializes SDP work on pc (negotiate.go)
	// offerOut: a node offer waits for its answer. hold: an answer to the
	// client is on its way and no node offer may overtake it. needOffer:
	// the peer connection changed since the last offer (rollback, dropped
	// senders) so the next step offers even if the room did not change.
	offerOut, hold, needOffer, closed bool
	senders                           map[*pubTrack]*webrtc.RTPSender
	downs                             map[*pubTrack]*downTrack
	// unanswered holds the tracks whose senders were added for the
	// outstanding offer: a rollback takes them off again.
	unanswered map[*pubTrack]bool
	// refused holds the tracks whose codec the subscriber's negotiation
	// did not accept: they are not added again until the client's next
	// own offer (which may bring other codecs).
	refused map[*pubTrack]bool
	midSeq  int // the last node mid number given (negMidPrefix)
	// sent is downs' values, copy on write (written under negMu): the
	// down tracks the own RTCP path (rtcpin.go) matches media SSRCs to.
	sent atomic.Pointer[[]*downTrack]

	kick chan struct{} // wakes negotiationLoop; capacity 1
	done chan struct{} // closed when the participant leaves

	dcMu sync.Mutex // guards dc
	dc   *webrtc.DataChannel

	bwe     atomic.Uint64 // the subscriber's REMB estimate in bit/s; 0 unknown
	level   atomic.Int32  // smoothed audio level, 0 silence to 127
	levelAt atomic.Int64  // unix nanoseconds of the last audio level

	leaveOnce sync.Once
}

func newParticipant(s *Server, r *room, id string, j *bus.Join) *participant {
	return &participant{s: s, room: r, id: id, identity: j.Identity, name: j.Name,
		canPub: j.Publish, canSub: j.Subscribe, joinedAt: time.Now(), ice: j.ICE,
		senders: map[*pubTrack]*webrtc.RTPSender{}, downs: map[*pubTrack]*downTrack{},
		unanswered: map[*pubTrack]bool{}, refused: map[*pubTrack]bool{}, own: s.newOwnPath(),
		hold: true, // until the join answer is sent (joined)
		kick: make(chan struct{}, 1), done: make(chan struct{})}
}

// start creates the peer connection and answers the client's offer.
func (p *participant) start(ctx context.Context, offer string) (string, error) {
	pc, err := p.s.newPeerConnection(p)
	if err != nil {
		return "", errStatus(bus.StatusInternal, err)
	}
	p.negMu.Lock()
	p.pc = pc
	p.negMu.Unlock()
	p.s.wg.Add(1)
	go p.negotiationLoop()
	pc.OnTrack(p.onTrack)
	pc.OnDataChannel(p.onDataChannel)
	pc.OnConnectionStateChange(func(st webrtc.PeerConnectionState) {
		switch st {
		case webrtc.PeerConnectionStateFailed:
			p.leave("connection failed")
		case webrtc.PeerConnectionStateConnected:
			p.s.m.connected.Inc()
		}
	})
	p.negMu.Lock()
	defer p.negMu.Unlock()
	answer, err := p.answerLocked(ctx, offer)
	if err != nil {
		return "", err
	}
	p.ufrag = sdpUfrag(answer)
	if p.ice == nil {
		// A group's session is announced once the node wins it.
		p.announce()
		p.s.servedUfrag(p)
	}
	return answer, nil
}

// announce tells the bus which node holds the session's ufrag.
func (p *participant) announce() {
	if err := p.s.bus.AnnounceSession(bus.SessionAnnounce{Session: p.id, Room: p.room.name, Node: p.s.cfg.NodeID,
		Ufrag: p.ufrag, Time: time.Now().UTC()}); err != nil {
		p.s.log.Debug("sfu: announce session", "err", err)
	}
}

// discard ends a group session the node never served: no room saw it, so
// nothing is announced; the peer connection closes.
func (p *participant) discard() {
	p.leaveOnce.Do(func() {
		p.negMu.Lock()
		p.closed = true
		close(p.done)
		pc := p.pc
		p.negMu.Unlock()
		if p.own != nil {
			p.own.close()
		}
		if pc != nil {
			p.s.wg.Add(1)
			go func() {
				defer p.s.wg.Done()
				_ = pc.Close()
			}()
		}
	})
}

func sdpUfrag(s string) string {
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "a=ice-ufrag:"); ok {
			return v
		}
	}
	return ""
}

// joined runs once the join answer is on its way: the room hears of the
// participant, and the participant subscribes to the room's tracks.
func (p *participant) joined() {
	p.s.publishEvent(bus.RoomEvent{Type: bus.EventParticipantJoined, Room: p.room.name, Session: p.id,
		Identity: p.identity, Name: p.name})
	p.release()
}

func (p *participant) addCandidate(c *bus.Candidate) error {
	if c == nil || c.Candidate == "" {
		return nil // end of candidates: nothing to do for an ICE-lite node
	}
	init := webrtc.ICECandidateInit{Candidate: c.Candidate, SDPMid: c.SDPMid, SDPMLineIndex: c.SDPMLineIndex,
		UsernameFragment: c.UsernameFragment}
	if err := p.pc.AddICECandidate(init); err != nil {
		return errStatus(bus.StatusBadRequest, err)
	}
	return nil
}

func containsTrack(ts []*pubTrack, t *pubTrack) bool {
	for _, x := range ts {
		if x == t {
			return true
		}
	}
	return false
}

// readSenderRTCP reads the subscriber's RTCP for one sent track from
// pion's receive path and acts on it (clientRTCP): keyframe requests go to
// the publisher, NACKs are answered, REMB and transport-cc feedback set
// the subscriber's bandwidth estimate. Sessions on the own RTCP path
// (rtcpin.go) get nothing here.
func (p *participant) readSenderRTCP(sender *webrtc.RTPSender, dt *downTrack) {
	buf := make([]byte, 1500)
	downs := []*downTrack{dt}
	for {
		pkts, _, err := sender.ReadRTCP()
		if err != nil {
			return
		}
		p.s.pionRTCP.Add(1)
		p.clientRTCP(pkts, downs, buf, false)
	}
}

// onTrack is called by pion for every incoming track (each simulcast layer
// separately); it forwards the track's packets until it ends.
func (p *participant) onTrack(remote *webrtc.TrackRemote, receiver *webrtc.RTPReceiver) {
	t, l, isNew := p.room.addLayer(p, remote, receiver)
	if t == nil {
		return
	}
	p.s.wg.Add(1)
	defer p.s.wg.Done()
	if isNew {
		p.s.applyNeed(t)
		p.room.offerClients(t)
		p.s.publishEvent(bus.RoomEvent{Type: bus.EventTrackPublished, Room: p.room.name, Session: p.id,
			Identity: p.identity, Track: t.info()})
		for _, o := range p.room.others(p) {
			o.requestNegotiation()
		}
	} else {
		t.requestKeyframe(l.idx)
	}
	p.s.wg.Add(1)
	go func() {
		defer p.s.wg.Done()
		readPublisherRTCP(remote, receiver, &p.s.pionRTCP)
	}()
	t.readLoop(l)
}

// readPublisherRTCP reads a publisher layer's RTCP through pion's
// interceptor chain until the receiver stops. Nothing in it is used here,
// but pion hands RTCP to the chain only when it is read: this is how the
// peer connection's rtpfeedback.Interceptor sees the publisher's sender
// reports, whose NTP time and arrival are the LSR and DLSR of the node's
// receiver reports (RFC 3550 section 6.4.1), from which the publisher
// computes its round-trip time. (Before, nothing read it: pion's receiver
// reports carried no LSR, and Chromium showed no RTT.) The own RTCP path
// (rtcpin.go) gives those to the interceptor itself. n counts the packets
// read.
func readPublisherRTCP(remote *webrtc.TrackRemote, receiver *webrtc.RTPReceiver, n *atomic.Uint64) {
	buf := make([]byte, 1500)
	rid := remote.RID()
	for {
		var err error
		if rid != "" {
			_, _, err = receiver.ReadSimulcast(buf, rid)
		} else {
			_, _, err = receiver.Read(buf)
		}
		if err != nil {
			return
		}
		n.Add(1)
	}
}

func (p *participant) onDataChannel(dc *webrtc.DataChannel) {
	dc.OnOpen(func() {
		p.dcMu.Lock()
		p.dc = dc
		p.dcMu.Unlock()
	})
	dc.OnMessage(func(m webrtc.DataChannelMessage) {
		if !p.canPub {
			return
		}
		p.s.m.dataMessages.Inc()
		for _, o := range p.room.others(p) {
			o.sendData(m)
		}
	})
}

func (p *participant) sendData(m webrtc.DataChannelMessage) {
	p.dcMu.Lock()
	dc := p.dc
	p.dcMu.Unlock()
	if dc == nil || !p.canSub {
		return
	}
	if m.IsString {
		_ = dc.SendText(string(m.Data))
	} else {
		_ = dc.Send(m.Data)
	}
}

// leave ends the session: it leaves the room, its tracks are taken from
// every subscriber, and the peer connection closes. reason, when not
// empty, is sent to the client as a closed message.
func (p *participant) leave(reason string) {
	p.leaveOnce.Do(func() {
		p.negMu.Lock()
		p.closed = true
		close(p.done)
		downs := p.downs
		p.downs = map[*pubTrack]*downTrack{}
		p.sent.Store(nil)
		p.senders = map[*pubTrack]*webrtc.RTPSender{}
		pc := p.pc
		p.negMu.Unlock()
		if p.own != nil {
			p.own.close()
		}
		for t, dt := range downs {
			t.removeDown(dt)
		}
		gone := p.room.removeTracksOf(p)
		p.s.removeSession(p)
		p.s.forgetGroup(p)
		p.s.m.leaves.Inc()
		for _, t := range gone {
			t.close()
			p.room.withdrawClients(t)
			p.s.publishEvent(bus.RoomEvent{Type: bus.EventTrackUnpublished, Room: p.room.name, Session: p.id,
				Identity: p.identity, Track: t.info()})
		}
		if len(gone) > 0 {
			for _, o := range p.room.others(p) {
				o.requestNegotiation()
			}
		}
		p.s.publishEvent(bus.RoomEvent{Type: bus.EventParticipantLeft, Room: p.room.name, Session: p.id,
			Identity: p.identity, Name: p.name})
		if p.ufrag != "" {
			_ = p.s.bus.AnnounceSession(bus.SessionAnnounce{Session: p.id, Room: p.room.name, Node: p.s.cfg.NodeID,
				Ufrag: p.ufrag, Gone: true, Time: time.Now().UTC()})
		}
		if reason != "" {
			_ = p.s.bus.PublishSession(p.s.cfg.NodeID, bus.SessionMessage{Type: bus.SessionClosed, Session: p.id,
				Error: bus.Errorf(bus.StatusUnavailable, "%s", reason)})
		}
		if pc != nil {
			p.s.wg.Add(1)
			go func() {
				defer p.s.wg.Done()
				_ = pc.Close()
			}()
		}
	})
}

func (s *Server) publishEvent(e bus.RoomEvent) {
	e.Node = s.cfg.NodeID
	e.Time = time.Now().UTC()
	if err := s.bus.PublishRoomEvent(e); err != nil {
		s.log.Debug("sfu: room event", "err", err)
	}
}
