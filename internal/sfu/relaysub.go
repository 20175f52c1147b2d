package sfu

import (
	"context"
	"encoding/binary"
	"strings"
	"sync"

	"github.com/pion/rtp"

	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cascade/relay"
	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
)

// Relay clients in rooms (docs/relay-protocol.md, "Clients" and
// "Receiving"). A relay client is present in its room on this node while
// it publishes (ClientJoin) or receives (ClientSubscribe): the room lives
// while it is there, and the bus hears of it as of a participant (its
// identity as the session), and of its tracks as of a publisher's, so that
// the controller carries them to the room's other nodes and brings the
// room's remote tracks here. A receiving client is announced every track
// of the room but its own under a one-byte index (SendClientTrack; all of
// them again at each of its hellos) and gets their packets as they are
// forwarded (pubTrack.couts): WebRTC publishers', other relay clients',
// and remote tracks the cascade brings; every layer of a simulcast track
// until the client chooses one (ClientLayer, clientOut), then that layer
// alone, rewritten into one stream as a WebRTC subscriber's (seqRewriter),
// or while it is not live the best live layer below it, chosen as a
// WebRTC subscriber's (pubTrack.chooseLayer).

// relayPeer is a relay client present in a room on this node.
type relayPeer struct {
	id  relay.ClientID
	g   relay.ClientGrant
	r   *room                   // set once
	pub []relaywire.ClientTrack // published (ClientJoin)
	sub *clientSub              // nil: it does not receive
}

// clientSub is what a receiving client gets; guarded by its room's mu.
type clientSub struct {
	slots   [relaywire.MaxSubTracks]*pubTrack
	outs    [relaywire.MaxSubTracks]*clientOut // slots[i]'s, for layer choices
	byTrack map[*pubTrack]uint8
	// next is where the search for a free index starts: indices go round,
	// so one is reused only long after its track left (an announcement
	// and a gone of one index never cross).
	next int
}

// clientOut is one receiving client a track's packets go to, and the
// layer it chose (docs/relay-protocol.md, "Layers"): every layer as the
// publisher sends it (relaywire.LayerAll, until it chooses), none
// (relaywire.LayerNone), or one layer, rewritten by the subscribers'
// seqRewriter into one RTP stream (one SSRC, sequence numbers and
// timestamps continuous across switches, each switch at a keyframe). The
// chosen layer is the most the client gets: the rewriter's target is the
// best live layer up to it (a layerReceiver, as a WebRTC subscriber's
// downTrack).
type clientOut struct {
	id  relay.ClientID
	idx uint8
	t   *pubTrack

	mu     sync.Mutex // guards the fields below; held while a packet is sent
	choice uint8
	seqRewriter
	ssrc    uint32 // the SSRC sent in a one-layer choice: the first packet's
	ssrcSet bool
	buf     []byte // the rewritten packet (made at the first one-layer choice)
}

// clientOutBuf bounds the packets a one-layer choice forwards (the relay
// message's limit).
const clientOutBuf = relaywire.MaxShardLen

func newClientOut(id relay.ClientID, idx uint8, t *pubTrack) *clientOut {
	return &clientOut{id: id, idx: idx, t: t, choice: relaywire.LayerAll,
		seqRewriter: seqRewriter{clock: t.codec.ClockRate, cur: -1}}
}

// send forwards one packet of layer idx to the client as its choice says;
// key: pkt is a video keyframe. It does not allocate.
func (o *clientOut) send(ep *relay.Endpoint, idx int, pkt *rtp.Packet, raw []byte, key, video bool, now int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch o.choice {
	case relaywire.LayerAll:
		_ = ep.SendClientMedia(o.id, o.idx, uint8(idx), raw)
		return
	case relaywire.LayerNone:
		return
	}
	ok, switched := o.admit(idx, pkt, key || !video, video, now)
	if !ok || len(raw) < 12 || len(raw) > len(o.buf) {
		return
	}
	if switched {
		o.t.r.s.m.layerSwitches.Inc()
	}
	if !o.ssrcSet {
		o.ssrc, o.ssrcSet = pkt.SSRC, true
	}
	seq, ts := o.next(pkt, now)
	b := o.buf[:len(raw)]
	copy(b, raw)
	binary.BigEndian.PutUint16(b[2:], seq)
	binary.BigEndian.PutUint32(b[4:], ts)
	binary.BigEndian.PutUint32(b[8:], o.ssrc)
	_ = ep.SendClientMedia(o.id, o.idx, uint8(idx), b)
}

// choose sets the client's choice; it reports whether it is one layer,
// whose target the caller then sets (pubTrack.chooseLayer: the chosen
// layer, or the best live one below it while the chosen one is not
// live). The choice said again (the client repeats it) keeps the target:
// a fallback stays until its layer's round moves it.
func (o *clientOut) choose(layer uint8) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if layer == relaywire.LayerAll || layer == relaywire.LayerNone {
		o.choice = layer
		return false
	}
	if o.choice == relaywire.LayerAll || o.choice == relaywire.LayerNone {
		// from every layer, or from a pause: the stream (re)starts at a
		// keyframe of the layer, after the last packet sent in a
		// one-layer choice
		o.cur = -1
		o.target = int(layer)
		if o.buf == nil {
			o.buf = make([]byte, clientOutBuf)
		}
	} else if o.choice != layer {
		o.target = int(layer)
	}
	o.choice = layer
	return true
}

// oneLayer reports whether the client chose one layer (its layer is
// chosen by chooseLayer).
func (o *clientOut) oneLayer() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.choice != relaywire.LayerAll && o.choice != relaywire.LayerNone
}

// layer, capped, setTarget and waiting make a clientOut a layerReceiver:
// the layer it asked for is its choice, and no estimate bounds it.
func (o *clientOut) layer() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.current()
}

func (o *clientOut) capped(l int) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return min(l, int(o.choice))
}

// setTarget asks for a keyframe of the new target unless it is the layer
// forwarded (the fallback's target moving back to it before the switch).
func (o *clientOut) setTarget(l int) {
	o.mu.Lock()
	ask := l != o.target && l != o.cur && o.choice != relaywire.LayerAll && o.choice != relaywire.LayerNone
	if o.choice != relaywire.LayerAll && o.choice != relaywire.LayerNone {
		o.target = l
	}
	o.mu.Unlock()
	if ask {
		o.t.requestKeyframe(l)
	}
}

func (o *clientOut) waiting() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.choice == relaywire.LayerAll || o.choice == relaywire.LayerNone || o.cur == o.target {
		return -1
	}
	return o.target
}

// chooseClientLayers sets the layer of each relay client that chose one
// layer of t, as the WebRTC subscribers' (chooseLayer, without an
// estimate): the chosen layer while it is live, else the best live one
// below it; the rounds (every 500 ms, room.updateLayers) follow the
// layers' liveness as the WebRTC subscribers' do.
func (t *pubTrack) chooseClientLayers() {
	outs := t.couts.Load()
	if outs == nil {
		return
	}
	for _, o := range *outs {
		if o.oneLayer() {
			t.chooseLayer(o, 0)
		}
	}
}

// clientAnnounce is one track announcement (t nil: gone) waiting to be
// sent; the announcer sends them in order.
type clientAnnounce struct {
	id  relay.ClientID
	idx uint8
	t   *relaywire.SubTrack
}

// announceQueue bounds the announcements waiting; beyond, they are
// dropped (counted) and the client's next hello (every 10 s) repeats
// every track.
const announceQueue = 1024

// announceTracks runs the announcer until ctx ends: announcements are queued
// under the rooms' locks, where the endpoint may not be called (it calls
// the SFU under its own), and sent from here.
func (s *Server) announceTracks(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case a := <-s.casc.announce:
			_ = s.casc.ep.SendClientTrack(a.id, a.idx, a.t)
		}
	}
}

func (s *Server) queueAnnounce(a clientAnnounce) {
	select {
	case s.casc.announce <- a:
	default:
		s.casc.announceDrops.Inc()
	}
}

// subTrack is t's announcement; nil when it cannot be told in the relay
// protocol (a name longer than relaywire.MaxName, a data track).
func (t *pubTrack) subTrack() *relaywire.SubTrack {
	kind := relaywire.KindAudio
	switch t.kind {
	case webrtc.RTPCodecTypeVideo:
		kind = relaywire.KindVideo
	case webrtc.RTPCodecTypeAudio:
	default:
		return nil
	}
	pub := t.publisher()
	if len(pub) == 0 || len(pub) > relaywire.MaxName || len(t.id) == 0 || len(t.id) > relaywire.MaxName ||
		len(t.codec.MimeType) > relaywire.MaxMime || len(t.codec.SDPFmtpLine) > relaywire.MaxFmtp || t.codec.ClockRate == 0 {
		return nil
	}
	return &relaywire.SubTrack{Publisher: pub, ClientTrack: relaywire.ClientTrack{ID: t.id, Kind: kind,
		Layers: uint8(t.layerCount()), Channels: uint8(min(t.codec.Channels, 255)),
		ClockRate: t.codec.ClockRate, Mime: t.codec.MimeType, Fmtp: t.codec.SDPFmtpLine}}
}

// publisher is who publishes t: a participant's session, a relay
// client's identity, or a remote node's publisher.
func (t *pubTrack) publisher() string {
	if t.pub != nil {
		return t.pub.id
	}
	return t.remote.key.Publisher
}

// ownedBy reports whether t is the relay client id's own track.
func (t *pubTrack) ownedBy(id relay.ClientID) bool { return t.remote != nil && t.remote.client == id }

// giveLocked gives a receiving client track t under a free index and
// returns the index; false when the client has it already, when the
// track cannot be told, or when every index is taken. r.mu is held.
func (p *relayPeer) giveLocked(t *pubTrack) (uint8, *relaywire.SubTrack, bool) {
	cs := p.sub
	if _, ok := cs.byTrack[t]; ok || t.ownedBy(p.id) {
		return 0, nil, false
	}
	st := t.subTrack()
	if st == nil {
		p.r.s.casc.untold.Inc()
		return 0, nil, false
	}
	for range relaywire.MaxSubTracks {
		i := cs.next
		cs.next = (cs.next + 1) % relaywire.MaxSubTracks
		if cs.slots[i] == nil {
			cs.slots[i] = t
			cs.outs[i] = newClientOut(p.id, uint8(i), t)
			cs.byTrack[t] = uint8(i)
			return uint8(i), st, true
		}
	}
	return 0, nil, false
}

// offerClients gives a track just added to the room to its receiving
// relay clients.
func (r *room) offerClients(t *pubTrack) {
	var outs []*clientOut
	var anns []clientAnnounce
	r.mu.Lock()
	for _, p := range r.clients {
		if p.sub == nil {
			continue
		}
		if idx, st, ok := p.giveLocked(t); ok {
			outs = append(outs, p.sub.outs[idx])
			anns = append(anns, clientAnnounce{id: p.id, idx: idx, t: st})
		}
	}
	r.mu.Unlock()
	if len(outs) == 0 {
		return
	}
	t.mu.Lock()
	storeFiltered(&t.couts, nil, outs...)
	t.mu.Unlock()
	for _, a := range anns {
		r.s.queueAnnounce(a)
	}
}

// withdrawClients tells the room's receiving relay clients that t left.
func (r *room) withdrawClients(t *pubTrack) {
	r.mu.Lock()
	for _, p := range r.clients {
		if p.sub == nil {
			continue
		}
		if idx, ok := p.sub.byTrack[t]; ok {
			delete(p.sub.byTrack, t)
			p.sub.slots[idx], p.sub.outs[idx] = nil, nil
			r.s.queueAnnounce(clientAnnounce{id: p.id, idx: idx})
		}
	}
	r.mu.Unlock()
	t.mu.Lock()
	t.couts.Store(nil)
	t.mu.Unlock()
}

// relayPeer returns the relay client's presence in its room on this node,
// made (with the room) when absent; joined reports that it is new.
func (s *Server) relayPeer(id relay.ClientID, g relay.ClientGrant) (p *relayPeer, joined bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.casc.mu.Lock()
	p = s.casc.peers[id]
	s.casc.mu.Unlock()
	if p != nil {
		return p, false
	}
	r := s.rooms[g.Room]
	if r == nil {
		r = newRoom(s, g.Room)
		s.rooms[g.Room] = r
		s.attachRemotesLocked(r)
	}
	p = &relayPeer{id: id, g: g, r: r}
	r.mu.Lock()
	r.clients[id] = p
	r.mu.Unlock()
	s.casc.mu.Lock()
	s.casc.peers[id] = p
	s.casc.mu.Unlock()
	return p, true
}

// dropPeerLocked forgets a relay client that neither publishes nor
// receives (and the room when nobody is left in it); it reports whether
// it did. s.mu is held.
func (s *Server) dropPeerLocked(p *relayPeer) bool {
	r := p.r
	r.mu.Lock()
	gone := len(p.pub) == 0 && p.sub == nil
	if gone {
		delete(r.clients, p.id)
	}
	empty := len(r.parts) == 0 && len(r.clients) == 0
	r.mu.Unlock()
	if !gone {
		return false
	}
	s.casc.mu.Lock()
	delete(s.casc.peers, p.id)
	s.casc.mu.Unlock()
	if empty && s.rooms[r.name] == r {
		delete(s.rooms, r.name)
	}
	return true
}

// peerEvent publishes a relay client's arrival or departure (its identity
// as the session) when its identity can name one.
func (s *Server) peerEvent(typ bus.RoomEventType, g relay.ClientGrant) {
	if bus.ValidName(g.Identity) {
		s.publishEvent(bus.RoomEvent{Type: typ, Room: g.Room, Session: g.Identity, Identity: g.Identity})
	}
}

// ClientSubscribe starts or refreshes a relay client's reception
// (relay.ClientSubscriber): every track of its room but its own is
// announced, the new ones given to it.
func (l *cascadeLocal) ClientSubscribe(id relay.ClientID, g relay.ClientGrant) {
	s := (*Server)(l)
	p, joined := s.relayPeer(id, g)
	if joined {
		s.peerEvent(bus.EventParticipantJoined, g)
		s.log.Info("sfu: relay client receives", "room", g.Room, "identity", g.Identity)
	}
	r := p.r
	type given struct {
		t   *pubTrack
		idx uint8
		st  *relaywire.SubTrack
		out *clientOut // new to the client
	}
	var all []given
	r.mu.Lock()
	if p.sub == nil {
		p.sub = &clientSub{byTrack: map[*pubTrack]uint8{}}
	}
	for _, t := range r.tracks {
		if idx, st, ok := p.giveLocked(t); ok {
			all = append(all, given{t: t, idx: idx, st: st, out: p.sub.outs[idx]})
		} else if idx, ok := p.sub.byTrack[t]; ok {
			all = append(all, given{t: t, idx: idx, st: t.subTrack()})
		}
	}
	r.mu.Unlock()
	for _, x := range all {
		if x.out != nil {
			x.t.mu.Lock()
			storeFiltered(&x.t.couts, nil, x.out)
			x.t.mu.Unlock()
		}
		s.queueAnnounce(clientAnnounce{id: id, idx: x.idx, t: x.st})
	}
}

// ClientUnsubscribe stops a relay client's reception.
func (l *cascadeLocal) ClientUnsubscribe(id relay.ClientID, g relay.ClientGrant) {
	s := (*Server)(l)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.casc.mu.Lock()
	p := s.casc.peers[id]
	s.casc.mu.Unlock()
	if p == nil {
		return
	}
	r := p.r
	r.mu.Lock()
	var tracks []*pubTrack
	if p.sub != nil {
		for t := range p.sub.byTrack {
			tracks = append(tracks, t)
		}
		p.sub = nil
	}
	r.mu.Unlock()
	for _, t := range tracks {
		t.mu.Lock()
		storeFiltered(&t.couts, func(o *clientOut) bool { return o.id != id })
		t.mu.Unlock()
	}
	if s.dropPeerLocked(p) {
		s.peerEvent(bus.EventParticipantLeft, g)
	}
}

// ClientFeedback acts on a receiving relay client's keyframe request for
// a track it receives: it goes to the track's publisher (across the
// cascade for a remote track), throttled as a subscriber's.
func (l *cascadeLocal) ClientFeedback(id relay.ClientID, idx, layer uint8, b []byte) {
	s := (*Server)(l)
	s.casc.mu.Lock()
	p := s.casc.peers[id]
	s.casc.mu.Unlock()
	var t *pubTrack
	if p != nil {
		p.r.mu.Lock()
		if p.sub != nil && int(idx) < len(p.sub.slots) {
			t = p.sub.slots[idx]
		}
		p.r.mu.Unlock()
	}
	if t == nil || int(layer) >= maxLayers {
		s.casc.unknown.Inc()
		return
	}
	if s.keyframeAsked(b) {
		go t.requestKeyframe(int(layer))
	}
}

// ClientLayer takes a receiving relay client's layer choice for a track
// it receives (relay.ClientLayerChooser): from then on it gets that layer
// alone (switched to at the layer's keyframe, asked of the publisher as a
// WebRTC subscriber's layer switch asks: across the cascade for a remote
// track; while the layer is not live, the best live layer below it),
// every layer, or none.
func (l *cascadeLocal) ClientLayer(id relay.ClientID, idx, layer uint8) error {
	s := (*Server)(l)
	s.casc.mu.Lock()
	p := s.casc.peers[id]
	s.casc.mu.Unlock()
	var o *clientOut
	if p != nil {
		p.r.mu.Lock()
		if p.sub != nil && int(idx) < len(p.sub.outs) {
			o = p.sub.outs[idx]
		}
		p.r.mu.Unlock()
	}
	if o == nil || layer < relaywire.LayerNone && int(layer) >= o.t.layerCount() {
		return relay.ErrNoTrack
	}
	if o.choose(layer) {
		// not on the endpoint's goroutine: a keyframe request may call
		// the endpoint (a remote track's, a relay publisher's)
		go o.t.chooseLayer(o, 0)
	}
	return nil
}

// layerCount is the number of simulcast layers t has (its announcement's).
func (t *pubTrack) layerCount() int { return min(max(t.nrids, 1), maxLayers) }

// relayPeersLeave tells the bus, as the node stops, that its relay
// clients and their tracks leave (as its participants do).
func (s *Server) relayPeersLeave() {
	if s.casc.ep == nil {
		return
	}
	s.casc.mu.Lock()
	peers := make([]*relayPeer, 0, len(s.casc.peers))
	for _, p := range s.casc.peers {
		peers = append(peers, p)
	}
	s.casc.peers = map[relay.ClientID]*relayPeer{}
	s.casc.mu.Unlock()
	for _, p := range peers {
		p.r.mu.Lock()
		pub := p.pub
		p.r.mu.Unlock()
		for i := range pub {
			s.publishEvent(bus.RoomEvent{Type: bus.EventTrackUnpublished, Room: p.g.Room, Session: p.g.Identity,
				Identity: p.g.Identity, Track: clientTrackInfo(p.g, &pub[i])})
		}
		s.peerEvent(bus.EventParticipantLeft, p.g)
	}
}

// clientTrackInfo is how the bus hears of a relay client's track.
func clientTrackInfo(g relay.ClientGrant, ct *relaywire.ClientTrack) *bus.TrackInfo {
	kind := "audio"
	if ct.Kind == relaywire.KindVideo {
		kind = "video"
	}
	codec := ct.Mime
	if i := strings.IndexByte(codec, '/'); i >= 0 {
		codec = codec[i+1:]
	}
	return &bus.TrackInfo{ID: ct.ID, StreamID: g.Identity, Kind: kind, Codec: codec, ClockRate: ct.ClockRate,
		Channels: uint16(ct.Channels), Fmtp: ct.Fmtp, Simulcast: int(ct.Layers)}
}
