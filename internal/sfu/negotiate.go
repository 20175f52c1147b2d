package sfu

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// Negotiation (RFC 8829, JSEP) of one participant's peer connection.
//
// One loop per participant (negotiationLoop) makes every node offer, and
// it is the only code that adds or removes the participant's senders. A
// step of the loop runs with negMu held and only in the signaling state
// stable with no node offer outstanding and no answer to the client on
// its way; it reads the room's tracks at that moment, changes the senders
// to match, and sends one offer if anything changed. Anything that may
// change what the participant should receive (a track published or gone,
// an answer applied, a client offer answered) only wakes the loop
// (requestNegotiation), so:
//
//   - there is never more than one node offer in flight, and the answer
//     is applied to the offer it answers;
//   - a sender is never added, removed or moved to another transceiver
//     while it is part of an offer that waits for its answer; changes made
//     meanwhile are offered after the answer;
//   - a newer view of the room is never overwritten by an older one (the
//     race of issue 4: two concurrent syncs, each with its own snapshot of
//     the room, the older applied last, took away a track the newer one had
//     just added to an offer).
//
// Glare: the client's offer wins (the node is the polite peer, as
// docs/signal.md says). The node withdraws its outstanding offer (pion
// v4.2.20 cannot roll one back, see withdrawLocked), takes off the senders
// that only that offer carried, answers, and offers again once the answer
// is sent. The transceivers a withdrawn offer created keep their mids, and
// the client numbered its own new m-sections without seeing them, so the
// node names the transceivers it creates itself "s1", "s2", ... which
// clients (numeric mids) do not use.

// negMidPrefix starts the mids the node gives its own transceivers.
const negMidPrefix = "s"

// negotiationLoop runs the participant's negotiation steps until it leaves.
func (p *participant) negotiationLoop() {
	defer p.s.wg.Done()
	for {
		select {
		case <-p.done:
			return
		case <-p.kick:
		}
		p.negotiateStep()
	}
}

// requestNegotiation wakes the negotiation loop. It never blocks; wakeups
// that arrive while one is pending are merged.
func (p *participant) requestNegotiation() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// release runs once an answer to the client (join or client offer) is
// sent: node offers may follow it now.
func (p *participant) release() {
	p.negMu.Lock()
	p.hold = false
	p.negMu.Unlock()
	p.requestNegotiation()
}

// negotiateStep makes the participant's senders match the room and offers
// the change, when the negotiation state allows it.
func (p *participant) negotiateStep() {
	p.negMu.Lock()
	defer p.negMu.Unlock()
	if p.closed || p.pc == nil || p.hold || p.offerOut || p.pc.RemoteDescription() == nil ||
		p.pc.SignalingState() != webrtc.SignalingStateStable {
		return // the answer or the release wakes the loop again
	}
	changed := p.syncSendersLocked()
	if !changed && !p.needOffer {
		return
	}
	// Until the offer is out, the changes are still to be offered (the
	// next wakeup tries again).
	p.needOffer = true
	if err := p.nameTransceiversLocked(); err != nil {
		p.s.log.Warn("sfu: name transceivers", "session", p.id, "err", err)
		return
	}
	offer, err := p.pc.CreateOffer(nil)
	if err != nil {
		p.s.log.Warn("sfu: create offer", "session", p.id, "err", err)
		return
	}
	gathered := webrtc.GatheringCompletePromise(p.pc)
	if err := p.pc.SetLocalDescription(offer); err != nil {
		p.s.log.Warn("sfu: set offer", "session", p.id, "err", err)
		return
	}
	select {
	case <-gathered:
	case <-time.After(5 * time.Second):
	}
	p.needOffer = false
	p.offerOut = true
	p.s.m.offers.Inc()
	desc := p.pc.LocalDescription().SDP
	p.logSDP("sfu: offer", desc)
	if err := p.s.bus.PublishSession(p.s.cfg.NodeID, bus.SessionMessage{Type: bus.SessionOffer, Session: p.id, SDP: desc}); err != nil {
		p.s.log.Warn("sfu: send offer", "session", p.id, "err", err)
	}
}

// syncSendersLocked adds a sender for every room track the participant
// lacks and removes those of tracks gone, reading the room now. It
// reports whether anything changed. Only negotiateStep calls it.
func (p *participant) syncSendersLocked() bool {
	if !p.canSub {
		return false
	}
	want := p.room.tracksExcept(p)
	changed := false
	for _, t := range want {
		if _, ok := p.senders[t]; ok || p.refused[t] {
			continue
		}
		dt := newDownTrack(t, p)
		sender, err := p.pc.AddTrack(dt)
		if err != nil {
			p.s.log.Warn("sfu: add track", "session", p.id, "track", t.key, "err", err)
			continue
		}
		p.senders[t] = sender
		p.downs[t] = dt
		storeFiltered(&p.sent, nil, dt)
		p.unanswered[t] = true
		t.addDown(dt)
		changed = true
		p.s.wg.Add(1)
		go func() {
			defer p.s.wg.Done()
			p.readSenderRTCP(sender, dt)
		}()
	}
	for t := range p.senders {
		if !containsTrack(want, t) {
			p.removeSenderLocked(t)
			changed = true
		}
	}
	return changed
}

// removeSenderLocked stops sending t to the participant.
func (p *participant) removeSenderLocked(t *pubTrack) {
	gone := p.downs[t]
	t.removeDown(gone)
	storeFiltered(&p.sent, func(d *downTrack) bool { return d != gone })
	if err := p.pc.RemoveTrack(p.senders[t]); err != nil {
		p.s.log.Debug("sfu: remove track", "session", p.id, "track", t.key, "err", err)
	}
	delete(p.senders, t)
	delete(p.downs, t)
	delete(p.unanswered, t)
}

// nameTransceiversLocked gives the transceivers the node created since its
// last offer a mid of the node's own namespace, unused by this peer
// connection.
func (p *participant) nameTransceiversLocked() error {
	txs := p.pc.GetTransceivers()
	used := make(map[string]bool, len(txs))
	for _, tx := range txs {
		used[tx.Mid()] = true
	}
	for _, tx := range txs {
		if tx.Mid() != "" {
			continue
		}
		for {
			p.midSeq++
			mid := negMidPrefix + strconv.Itoa(p.midSeq)
			if used[mid] {
				continue
			}
			if err := tx.SetMid(mid); err != nil {
				return err
			}
			used[mid] = true
			break
		}
	}
	return nil
}

// withdrawLocked takes back the node's outstanding offer (glare). pion
// v4.2.20 cannot roll a local offer back (its signaling state machine
// refuses have-local-offer -> rollback -> stable), so the node ends the
// offer with an answer of its own making (withdrawalAnswer): the client's
// last description for every m-section it knows, the new m-sections
// inactive. The senders only that offer carried are taken off first, so
// that nothing is sent on them before they are offered anew; their
// transceivers keep their node mids and are reused by the next step.
func (p *participant) withdrawLocked() error {
	pending, remote := p.pc.PendingLocalDescription(), p.pc.CurrentRemoteDescription()
	if pending == nil || remote == nil {
		return errNoOffer
	}
	answer, err := withdrawalAnswer(pending.SDP, remote.SDP)
	if err != nil {
		return err
	}
	for t := range p.unanswered {
		p.removeSenderLocked(t)
	}
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		return err
	}
	p.logSDP("sfu: offer withdrawn", answer)
	p.offerOut = false
	p.needOffer = true
	return nil
}

// withdrawalAnswer makes the answer that ends the node's offer without
// the client: for each m-section of offer, the client's own section of
// the same mid from remote (its last description), or, for a section new
// in offer, that section inactive, with the client's ICE and DTLS
// attributes. Candidates are left out (an ICE-lite node has them).
func withdrawalAnswer(offer, remote string) (string, error) {
	var o, r sdp.SessionDescription
	if err := o.UnmarshalString(offer); err != nil {
		return "", err
	}
	if err := r.UnmarshalString(remote); err != nil {
		return "", err
	}
	known := map[string]*sdp.MediaDescription{}
	var transport []sdp.Attribute
	for _, m := range r.MediaDescriptions {
		if mid, ok := m.Attribute("mid"); ok {
			known[mid] = m
		}
		if transport == nil {
			transport = transportAttributes(m.Attributes)
		}
	}
	if len(transport) == 0 {
		transport = transportAttributes(r.Attributes)
	}
	a := r
	a.Attributes = nil
	for _, at := range r.Attributes {
		if at.Key != "group" {
			a.Attributes = append(a.Attributes, at)
		}
	}
	a.MediaDescriptions = nil
	var mids []string
	for _, m := range o.MediaDescriptions {
		mid, ok := m.Attribute("mid")
		if !ok {
			return "", errNoMid
		}
		mids = append(mids, mid)
		if rm := known[mid]; rm != nil {
			c := *rm
			c.Attributes = nil
			for _, at := range rm.Attributes {
				if at.Key != "candidate" && at.Key != "end-of-candidates" {
					c.Attributes = append(c.Attributes, at)
				}
			}
			a.MediaDescriptions = append(a.MediaDescriptions, &c)
			continue
		}
		c := *m
		c.Attributes = append([]sdp.Attribute{}, transport...)
		for _, at := range m.Attributes {
			switch at.Key {
			case "ice-ufrag", "ice-pwd", "ice-options", "fingerprint", "setup", "candidate", "end-of-candidates",
				"ssrc", "ssrc-group", "msid", "rid", "simulcast",
				"sendrecv", "sendonly", "recvonly", "inactive":
				continue
			}
			c.Attributes = append(c.Attributes, at)
		}
		c.Attributes = append(c.Attributes, sdp.Attribute{Key: "inactive"})
		a.MediaDescriptions = append(a.MediaDescriptions, &c)
	}
	if len(mids) == 0 {
		return "", errNoOffer
	}
	a.Attributes = append(a.Attributes, sdp.Attribute{Key: "group", Value: "BUNDLE " + strings.Join(mids, " ")})
	b, err := a.Marshal()
	if err != nil {
		return "", err
	}
	// What the client sent once parsed, but not every part of it need
	// survive the copy: check what pion will parse.
	var check sdp.SessionDescription
	if err := check.Unmarshal(b); err != nil {
		return "", err
	}
	return string(b), nil
}

// transportAttributes returns the ICE and DTLS attributes among attrs, a
// setup of actpass (an offer's) made active (an answer's).
func transportAttributes(attrs []sdp.Attribute) []sdp.Attribute {
	var out []sdp.Attribute
	for _, at := range attrs {
		switch at.Key {
		case "ice-ufrag", "ice-pwd", "fingerprint":
			out = append(out, at)
		case "setup":
			if at.Value == "actpass" {
				at.Value = "active"
			}
			out = append(out, at)
		}
	}
	return out
}

// answerLocked applies a client offer and returns the node's answer with
// its candidates (ICE-lite: all of them are known at once). On failure
// the peer connection is back in the stable state.
func (p *participant) answerLocked(ctx context.Context, offer string) (string, error) {
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		p.s.m.badSDP.Inc()
		return "", errStatus(bus.StatusBadRequest, err)
	}
	p.logSDP("sfu: client offer", offer)
	answer, err := p.pc.CreateAnswer(nil)
	if err != nil {
		p.rollbackRemoteLocked()
		return "", errStatus(bus.StatusBadRequest, err)
	}
	gathered := webrtc.GatheringCompletePromise(p.pc)
	if err := p.pc.SetLocalDescription(answer); err != nil {
		p.rollbackRemoteLocked()
		return "", errStatus(bus.StatusInternal, err)
	}
	select {
	case <-gathered:
	case <-ctx.Done():
		return "", bus.Errorf(bus.StatusUnavailable, "gathering: %v", ctx.Err())
	case <-time.After(5 * time.Second):
		return "", bus.Errorf(bus.StatusInternal, "gathering did not complete")
	}
	return p.pc.LocalDescription().SDP, nil
}

// rollbackRemoteLocked returns to stable after a client offer that could
// not be answered.
func (p *participant) rollbackRemoteLocked() {
	if p.pc.SignalingState() != webrtc.SignalingStateHaveRemoteOffer {
		return
	}
	if rd := p.pc.RemoteDescription(); rd != nil {
		_ = p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeRollback, SDP: rd.SDP})
	}
}

// clientOffer serves a client renegotiation. On glare (the node's own offer
// is out) the node withdraws its offer and offers again afterwards.
func (p *participant) clientOffer(ctx context.Context, offer string) (bus.Reply, error) {
	sends, err := sendsMedia(offer)
	if err != nil {
		p.s.m.badSDP.Inc()
		return bus.Reply{}, bus.Errorf(bus.StatusBadRequest, "offer: %v", err)
	}
	if sends && !p.canPub {
		return bus.Reply{}, bus.Errorf(bus.StatusUnauthorized, "session %s may not publish", p.id)
	}
	p.negMu.Lock()
	defer p.negMu.Unlock()
	if p.closed {
		return bus.Reply{}, bus.Errorf(bus.StatusNotFound, "session %s is closed", p.id)
	}
	if p.offerOut {
		if err := p.withdrawLocked(); err != nil {
			return bus.Reply{}, errStatus(bus.StatusConflict, err)
		}
		p.s.m.glare.Inc()
	}
	clear(p.refused)
	answer, err := p.answerLocked(ctx, offer)
	if err != nil {
		// Back in stable: a rolled-back offer is due again.
		p.requestNegotiation()
		return bus.Reply{}, err
	}
	p.unanswered = map[*pubTrack]bool{}
	if p.dropUnsupportedLocked() {
		p.needOffer = true
	}
	// No node offer may overtake this answer: release, after the reply is
	// sent, lets the loop offer what changed meanwhile.
	p.hold = true
	return bus.Reply{SDP: answer, After: p.release}, nil
}

// clientAnswer applies the client's answer to the node's outstanding
// offer; the loop then offers whatever changed while it was out.
func (p *participant) clientAnswer(answer string) (bus.Reply, error) {
	p.negMu.Lock()
	defer p.negMu.Unlock()
	if !p.offerOut {
		return bus.Reply{}, bus.Errorf(bus.StatusConflict, "session %s: no offer outstanding", p.id)
	}
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		p.s.m.badSDP.Inc()
		return bus.Reply{}, errStatus(bus.StatusBadRequest, err)
	}
	p.logSDP("sfu: client answer", answer)
	p.offerOut = false
	p.unanswered = map[*pubTrack]bool{}
	if p.dropUnsupportedLocked() {
		p.needOffer = true
	}
	return bus.Reply{After: p.requestNegotiation}, nil
}

// dropUnsupportedLocked removes the senders whose track the subscriber's
// codecs could not take (bound muted by downTrack.Bind) and reports
// whether any was removed, in which case the node must offer again.
func (p *participant) dropUnsupportedLocked() bool {
	dropped := false
	for t, dt := range p.downs {
		if !dt.unsupported.Load() {
			continue
		}
		p.s.log.Warn("sfu: subscriber cannot take track codec", "session", p.id, "track", t.key,
			"codec", t.codec.MimeType)
		p.removeSenderLocked(t)
		p.refused[t] = true
		p.s.m.unsupportedTracks.Inc()
		dropped = true
	}
	return dropped
}

// logSDP logs, at debug level, the m-sections of an SDP: kind, mid and
// direction of each.
func (p *participant) logSDP(msg, desc string) {
	if !p.s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	var b strings.Builder
	for _, line := range strings.Split(desc, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "m="):
			if f := strings.Fields(line); len(f) > 0 {
				b.WriteString(" " + strings.TrimPrefix(f[0], "m="))
			}
		case strings.HasPrefix(line, "a=mid:"):
			b.WriteString(":" + strings.TrimPrefix(line, "a=mid:"))
		case line == "a=sendrecv" || line == "a=sendonly" || line == "a=recvonly" || line == "a=inactive":
			b.WriteString("/" + line[2:])
		}
	}
	p.s.log.Debug(msg, "session", p.id, "identity", p.identity, "sections", b.String())
}
