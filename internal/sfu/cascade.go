package sfu

import (
	"context"
	"fmt"
	"hash/fnv"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cascade/relay"
	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/rtpcodec"
)

// The cascade (docs/cascade.md): with Config.CascadeListen the node opens
// a relay endpoint (package cascade/relay) and implements relay.Local. A
// local publisher's track that other nodes need is passed to the endpoint
// (forward, Endpoint.Send); a remote publisher's track (AddRemoteTrack) is
// a pubTrack without a participant, fed by DeliverMedia, which this node's
// subscribers receive like a local one. Keyframe requests for a remote
// track go back to its node (SendFeedback); NACKs are answered from this
// node's own cache of the relayed packets.

// RemoteTrack describes a track published on another node that this
// node's subscribers may receive.
type RemoteTrack struct {
	Room      string
	Publisher string // the publisher's session id
	Track     string // its track id (TrackInfo.ID)
	StreamID  string
	// Node is the relay id of the node the track is published on.
	Node uint32
	// Kind is "audio" or "video"; MimeType the codec ("video/VP8").
	Kind      string
	MimeType  string
	ClockRate uint32
	Channels  uint16
	Fmtp      string
	// Layers is the number of simulcast layers (1 without simulcast).
	Layers int

	// client is the relay client publishing the track on this node (0:
	// another node publishes it), ctrack its index among the client's.
	client relay.ClientID
	ctrack uint8
}

// RemoteTrackOf is the remote track a track_published event of a node
// (relay id node) describes.
func RemoteTrackOf(room, publisher string, node uint32, ti *bus.TrackInfo) RemoteTrack {
	return RemoteTrack{Room: room, Publisher: publisher, Track: ti.ID, StreamID: ti.StreamID, Node: node,
		Kind: ti.Kind, MimeType: ti.Kind + "/" + ti.Codec, ClockRate: ti.ClockRate, Channels: ti.Channels,
		Fmtp: ti.Fmtp, Layers: max(1, ti.Simulcast)}
}

func (rt *RemoteTrack) validate() error {
	if !bus.ValidName(rt.Room) || !bus.ValidName(rt.Publisher) || rt.Track == "" || len(rt.Track) > 256 ||
		len(rt.StreamID) > 256 || len(rt.Fmtp) > 512 {
		return fmt.Errorf("%w: remote track %q/%q/%q: bad name", ErrConfig, rt.Room, rt.Publisher, rt.Track)
	}
	if rt.Node == 0 || rt.ClockRate == 0 || rt.Layers < 1 || rt.Layers > maxLayers {
		return fmt.Errorf("%w: remote track %s/%s: node, clock rate or layers out of range", ErrConfig, rt.Publisher, rt.Track)
	}
	kind := webrtc.NewRTPCodecType(rt.Kind)
	if kind == 0 || !strings.HasPrefix(strings.ToLower(rt.MimeType), rt.Kind+"/") {
		return fmt.Errorf("%w: remote track %s/%s: kind %q, codec %q", ErrConfig, rt.Publisher, rt.Track, rt.Kind, rt.MimeType)
	}
	return nil
}

// cascadeState is the node's side of the cascade; nil fields when off.
type cascadeState struct {
	ep *relay.Endpoint
	id uint32

	mu sync.Mutex // guards remotes, needs and peers
	// remotes are the remote tracks by room, then by pubTrack key.
	remotes map[string]map[string]*RemoteTrack
	// needs are the local tracks other nodes need, by pubTrack key in
	// each room (a need may come before the track is published here).
	needs map[relay.StreamKey]bool
	// peers are the relay clients present in rooms here (relaysub.go).
	peers map[relay.ClientID]*relayPeer
	// announce queues track announcements to receiving relay clients.
	announce      chan clientAnnounce
	announceDrops prometheus.Counter
	// untold counts tracks not offered to a receiving relay client: the
	// track message cannot tell them (pubTrack.subTrack).
	untold prometheus.Counter

	// cmdMu serialises the controller's commands; applied is the last.
	cmdMu   sync.Mutex
	applied cascadeApplied

	unknown, feedbackIn, feedbackOut, stale prometheus.Counter
}

// RelayID derives a node's 32-bit relay id from its node name (FNV-1a,
// never 0): the same on every restart, so peers' keys and routes stay
// valid. Two names that collide are refused by the controller.
func RelayID(node string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(node))
	if v := h.Sum32(); v != 0 {
		return v
	}
	return 1
}

// openCascade opens the relay endpoint when the cascade is configured.
func (s *Server) openCascade() error {
	if !s.cfg.CascadeListen.IsValid() {
		return nil
	}
	c := &s.casc
	c.id = s.cfg.CascadeID
	if c.id == 0 {
		c.id = RelayID(s.cfg.NodeID)
	}
	c.remotes = map[string]map[string]*RemoteTrack{}
	c.needs = map[relay.StreamKey]bool{}
	c.peers = map[relay.ClientID]*relayPeer{}
	c.announce = make(chan clientAnnounce, announceQueue)
	cnt := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "traverse", Subsystem: "sfu", Name: name, Help: help})
	}
	c.unknown = cnt("cascade_unknown_total", "Relayed packets for a remote track this node does not know (dropped).")
	c.feedbackIn = cnt("cascade_feedback_in_total", "Keyframe requests other nodes sent for local tracks.")
	c.feedbackOut = cnt("cascade_feedback_out_total", "Keyframe requests sent to remote tracks' nodes.")
	c.stale = cnt("cascade_stale_commands_total", "Cascade commands ignored: from an older controller lease than one applied.")
	c.announceDrops = cnt("relay_client_announce_dropped_total", "Track announcements to receiving relay clients dropped: the queue was full (the client's next hello repeats them).")
	c.untold = cnt("relay_client_untold_total", "Tracks not offered to a receiving relay client (at each of its hellos): a publisher or track id over 64 bytes, an fmtp line over 255, a data track.")
	if s.cfg.Registerer != nil {
		for _, m := range []prometheus.Collector{c.unknown, c.feedbackIn, c.feedbackOut, c.stale, c.announceDrops, c.untold} {
			if err := s.cfg.Registerer.Register(m); err != nil {
				return err
			}
		}
	}
	ep, err := relay.New(relay.Config{Node: relay.NodeID(c.id), Listen: s.cfg.CascadeListen, Secret: s.cfg.CascadeSecret,
		Local: (*cascadeLocal)(s), Registry: s.cfg.Registerer, ClientAuth: s.cfg.CascadeClientAuth, MaxClients: s.cfg.CascadeMaxClients,
		ClientRate: s.cfg.CascadeClientRate, ClientIdle: s.cfg.cascadeClientIdle})
	if err != nil {
		return fmt.Errorf("sfu: cascade: %w", err)
	}
	c.ep = ep
	return nil
}

// Cascade returns the node's relay endpoint (nil without a cascade), for
// the wiring that pushes its peers, routes and needs.
func (s *Server) Cascade() *relay.Endpoint { return s.casc.ep }

// CascadeID returns the node's relay id (0 without a cascade).
func (s *Server) CascadeID() uint32 {
	if s.casc.ep == nil {
		return 0
	}
	return s.casc.id
}

// relayAddr is the relay address the node announces.
func (s *Server) relayAddr() string {
	if s.casc.ep == nil {
		return ""
	}
	a := s.casc.ep.Addr()
	// A balanced group's public address is the balancer's, shared by the
	// group: each node's relay port is reached at its own address.
	if s.cfg.PublicIP.IsValid() && s.cfg.Group == "" {
		a = netip.AddrPortFrom(s.cfg.PublicIP, a.Port())
	}
	return a.String()
}

// runCascade runs the endpoint until ctx ends.
func (s *Server) runCascade(ctx context.Context) error {
	if s.casc.ep == nil {
		return nil
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		s.cascadeControl(ctx)
	}()
	go func() {
		defer wg.Done()
		s.announceTracks(ctx)
	}()
	err := s.casc.ep.Run(ctx)
	wg.Wait()
	return err
}

// AddRemoteTrack makes a track published on another node part of its
// room here: this node's subscribers in the room are offered it, and
// DeliverMedia feeds it. Adding a track already known does nothing.
func (s *Server) AddRemoteTrack(rt RemoteTrack) error {
	if s.casc.ep == nil {
		return fmt.Errorf("%w: no cascade", ErrConfig)
	}
	if err := rt.validate(); err != nil {
		return err
	}
	key := rt.Publisher + "/" + rt.Track
	s.mu.Lock()
	c := &s.casc
	c.mu.Lock()
	m := c.remotes[rt.Room]
	if m == nil {
		m = map[string]*RemoteTrack{}
		c.remotes[rt.Room] = m
	}
	_, known := m[key]
	m[key] = &rt
	c.mu.Unlock()
	r := s.rooms[rt.Room]
	s.mu.Unlock()
	if known || r == nil {
		return nil
	}
	if r.addRemote(&rt) {
		r.mu.Lock()
		t := r.tracks[key]
		r.mu.Unlock()
		r.offerClients(t)
		for _, o := range r.others(nil) {
			o.requestNegotiation()
		}
	}
	return nil
}

// RemoveRemoteTrack takes a remote track out of its room (its publisher
// left or stopped): this node's subscribers stop receiving it.
func (s *Server) RemoveRemoteTrack(room, publisher, track string) {
	key := publisher + "/" + track
	s.mu.Lock()
	c := &s.casc
	c.mu.Lock()
	if m := c.remotes[room]; m != nil {
		delete(m, key)
		if len(m) == 0 {
			delete(c.remotes, room)
		}
	}
	c.mu.Unlock()
	r := s.rooms[room]
	s.mu.Unlock()
	if r == nil {
		return
	}
	r.mu.Lock()
	t := r.tracks[key]
	if t != nil && t.pub == nil {
		delete(r.tracks, key)
	} else {
		t = nil
	}
	r.mu.Unlock()
	if t != nil {
		t.close()
		r.withdrawClients(t)
		for _, o := range r.others(nil) {
			o.requestNegotiation()
		}
	}
}

// attachRemotes gives a room just made on this node the remote tracks
// known for it. Called with s.mu held.
func (s *Server) attachRemotesLocked(r *room) {
	if s.casc.ep == nil {
		return
	}
	s.casc.mu.Lock()
	var list []*RemoteTrack
	for _, rt := range s.casc.remotes[r.name] {
		list = append(list, rt)
	}
	s.casc.mu.Unlock()
	for _, rt := range list {
		r.addRemote(rt)
	}
}

// addRemote adds a remote publisher's track to the room; false when the
// room has it already.
func (r *room) addRemote(rt *RemoteTrack) bool {
	key := rt.Publisher + "/" + rt.Track
	codec := webrtc.RTPCodecParameters{RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: rt.MimeType,
		ClockRate: rt.ClockRate, Channels: rt.Channels, SDPFmtpLine: rt.Fmtp}}
	t := &pubTrack{r: r, key: key, id: rt.Track, streamID: rt.StreamID, kind: webrtc.NewRTPCodecType(rt.Kind),
		codec: codec, ck: rtpcodec.CodecOf(rt.MimeType), nrids: rt.Layers,
		remote: &remoteSource{node: relay.NodeID(rt.Node), client: rt.client, ctrack: rt.ctrack,
			key: relay.StreamKey{Room: rt.Room, Publisher: rt.Publisher, Track: rt.Track}}}
	if t.streamID == "" {
		t.streamID = rt.Publisher
	}
	empty := []*downTrack{}
	t.downs.Store(&empty)
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.tracks[key]; ok {
		return false
	}
	r.tracks[key] = t
	return true
}

// remoteSource is where a remote track comes from.
type remoteSource struct {
	node relay.NodeID
	key  relay.StreamKey
	// client is the relay client that publishes the track here (0: the
	// node does), ctrack the track's index among the client's.
	client relay.ClientID
	ctrack uint8
	// lastPLI is each layer's last keyframe request (unix nanoseconds):
	// at most one per Config.PLIInterval crosses the cascade.
	lastPLI [maxLayers]atomic.Int64
}

// cascadeLocal is the Server as the relay endpoint's relay.Local.
type cascadeLocal Server

// DeliverMedia feeds a remote track's packet to this node's subscribers.
// It does not allocate once the track's layer exists.
func (l *cascadeLocal) DeliverMedia(room, publisher, track []byte, layerIdx uint8, rtp []byte) {
	s := (*Server)(l)
	if int(layerIdx) >= maxLayers {
		s.casc.unknown.Inc()
		return
	}
	t := s.remoteTrack(room, publisher, track)
	if t == nil {
		s.casc.unknown.Inc()
		return
	}
	t.mu.Lock()
	ly := t.layers[layerIdx]
	if ly == nil {
		ly = &layer{idx: int(layerIdx)}
		if t.kind == webrtc.RTPCodecTypeVideo {
			ly.cache = &packetCache{}
		}
		t.layers[layerIdx] = ly
	}
	t.mu.Unlock()
	t.receive(ly, rtp, time.Now().UnixNano(), nil)
}

// remoteTrack finds a room's remote track by the relay header's names
// without allocating (the key is built in a stack buffer).
func (s *Server) remoteTrack(room, publisher, track []byte) *pubTrack {
	var kb [512]byte
	if len(publisher)+1+len(track) > len(kb) {
		return nil
	}
	n := copy(kb[:], publisher)
	kb[n] = '/'
	n++
	n += copy(kb[n:], track)
	s.mu.Lock()
	r := s.rooms[string(room)]
	s.mu.Unlock()
	if r == nil {
		return nil
	}
	r.mu.Lock()
	t := r.tracks[string(kb[:n])]
	r.mu.Unlock()
	if t == nil || t.remote == nil {
		return nil
	}
	return t
}

// DeliverFeedback acts on another node's keyframe request for a local
// track: PLI and FIR ask the publisher for a keyframe of the layer.
func (l *cascadeLocal) DeliverFeedback(room, publisher, track []byte, layerIdx uint8, _ relay.NodeID, b []byte) {
	s := (*Server)(l)
	t := s.localTrack(string(room), string(publisher)+"/"+string(track))
	if t == nil {
		s.casc.unknown.Inc()
		return
	}
	if s.keyframeAsked(b) {
		s.casc.feedbackIn.Inc()
		go t.requestKeyframe(int(layerIdx))
	}
}

// keyframeAsked reports whether RTCP b holds a PLI or FIR (bad RTCP is
// counted).
func (s *Server) keyframeAsked(b []byte) bool {
	pkts, err := rtcp.Unmarshal(b)
	if err != nil {
		s.m.badRTP.Inc()
		return false
	}
	for _, p := range pkts {
		switch p.(type) {
		case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
			return true
		}
	}
	return false
}

// Need starts or stops passing a local track to the relay endpoint.
func (l *cascadeLocal) Need(k relay.StreamKey, needed bool) {
	s := (*Server)(l)
	s.casc.mu.Lock()
	if needed {
		s.casc.needs[k] = true
	} else {
		delete(s.casc.needs, k)
	}
	s.casc.mu.Unlock()
	if t := s.localTrack(k.Room, k.Publisher+"/"+k.Track); t != nil {
		t.setNeeded(k, needed)
	}
}

// localTrack returns a track published on this node, a participant's or a
// relay client's.
func (s *Server) localTrack(room, key string) *pubTrack {
	s.mu.Lock()
	r := s.rooms[room]
	s.mu.Unlock()
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.tracks[key]
	if t == nil || !t.publishedHere() {
		return nil
	}
	return t
}

// publishedHere reports whether a participant or a relay client of this
// node publishes t (not another node).
func (t *pubTrack) publishedHere() bool {
	return t.pub != nil || t.remote != nil && t.remote.client != 0
}

// setNeeded makes forward pass the track's packets to the relay endpoint
// (or stop); on needed every layer is asked for a keyframe.
func (t *pubTrack) setNeeded(k relay.StreamKey, needed bool) {
	if !needed {
		t.casc.Store(nil)
		return
	}
	t.casc.Store(&k)
	for i := range maxLayers {
		go t.requestKeyframe(i)
	}
}

// applyNeed is called when a local track is published: a need that came
// first takes effect.
func (s *Server) applyNeed(t *pubTrack) {
	if s.casc.ep == nil || !t.publishedHere() {
		return
	}
	k := relay.StreamKey{Room: t.r.name, Publisher: t.publisher(), Track: t.id}
	s.casc.mu.Lock()
	needed := s.casc.needs[k]
	s.casc.mu.Unlock()
	if needed {
		t.setNeeded(k, true)
	}
}

// remoteKeyframe sends a keyframe request for a remote track's layer to
// its node.
func (t *pubTrack) remoteKeyframe(idx int) {
	s := t.r.s
	now := time.Now().UnixNano()
	last := t.remote.lastPLI[idx].Load()
	if now-last < int64(s.cfg.PLIInterval) || !t.remote.lastPLI[idx].CompareAndSwap(last, now) {
		s.m.pliThrottled.Inc()
		return
	}
	s.m.pliForwarded.Inc()
	b, err := (&rtcp.PictureLossIndication{}).Marshal()
	if err != nil {
		return
	}
	if t.remote.client != 0 {
		err = s.casc.ep.SendClientFeedback(t.remote.client, t.remote.ctrack, uint8(idx), b)
	} else {
		err = s.casc.ep.SendFeedback(t.remote.key, uint8(idx), t.remote.node, b)
	}
	if err == nil {
		s.casc.feedbackOut.Inc()
	}
}

// ClientJoin puts a relay client's tracks in its room on this node: each
// is a remote track whose source is the client, offered to the room's
// subscribers like a publisher's (relay.ClientLocal), and announced on
// the bus like a publisher's, so that the cascade carries it to the
// room's other nodes.
func (l *cascadeLocal) ClientJoin(id relay.ClientID, g relay.ClientGrant, tracks []relaywire.ClientTrack) error {
	s := (*Server)(l)
	for _, ct := range tracks {
		if ct.Kind == relaywire.KindVideo && rtpcodec.CodecOf(ct.Mime) == rtpcodec.Other {
			return fmt.Errorf("%w: relay client %s: codec %q", ErrConfig, g.Identity, ct.Mime)
		}
	}
	p, joined := s.relayPeer(id, g)
	for i, ct := range tracks {
		kind := "audio"
		if ct.Kind == relaywire.KindVideo {
			kind = "video"
		}
		rt := RemoteTrack{Room: g.Room, Publisher: g.Identity, Track: ct.ID, StreamID: g.Identity, Node: s.casc.id,
			Kind: kind, MimeType: ct.Mime, ClockRate: ct.ClockRate, Channels: uint16(ct.Channels), Fmtp: ct.Fmtp,
			Layers: int(ct.Layers), client: id, ctrack: uint8(i)}
		if err := s.AddRemoteTrack(rt); err != nil {
			s.removeClientTracks(g, tracks[:i])
			s.mu.Lock()
			s.dropPeerLocked(p)
			s.mu.Unlock()
			return err
		}
	}
	p.r.mu.Lock()
	p.pub = tracks
	p.r.mu.Unlock()
	if joined {
		s.peerEvent(bus.EventParticipantJoined, g)
	}
	for i := range tracks {
		if t := s.localTrack(g.Room, g.Identity+"/"+tracks[i].ID); t != nil {
			s.applyNeed(t)
		}
		s.publishEvent(bus.RoomEvent{Type: bus.EventTrackPublished, Room: g.Room, Session: g.Identity, Identity: g.Identity,
			Track: clientTrackInfo(g, &tracks[i])})
	}
	s.log.Info("sfu: relay client joined", "room", g.Room, "identity", g.Identity, "tracks", len(tracks))
	return nil
}

// ClientLeave takes a relay client's tracks out of its room.
func (l *cascadeLocal) ClientLeave(id relay.ClientID, g relay.ClientGrant, tracks []relaywire.ClientTrack) {
	s := (*Server)(l)
	s.removeClientTracks(g, tracks)
	for i := range tracks {
		s.publishEvent(bus.RoomEvent{Type: bus.EventTrackUnpublished, Room: g.Room, Session: g.Identity, Identity: g.Identity,
			Track: clientTrackInfo(g, &tracks[i])})
	}
	s.mu.Lock()
	s.casc.mu.Lock()
	p := s.casc.peers[id]
	s.casc.mu.Unlock()
	left := false
	if p != nil {
		p.r.mu.Lock()
		p.pub = nil
		p.r.mu.Unlock()
		left = s.dropPeerLocked(p)
	}
	s.mu.Unlock()
	if left {
		s.peerEvent(bus.EventParticipantLeft, g)
	}
}

func (s *Server) removeClientTracks(g relay.ClientGrant, tracks []relaywire.ClientTrack) {
	for _, ct := range tracks {
		s.RemoveRemoteTrack(g.Room, g.Identity, ct.ID)
	}
}

// cascadeReportInterval is how often the node reports its relay links to
// the controller.
const cascadeReportInterval = 500 * time.Millisecond

// cascadeControl follows the controller's cascade commands for this node
// and reports the node's links, until ctx ends.
func (s *Server) cascadeControl(ctx context.Context) {
	sub, err := s.bus.SubscribeCascadeCommands(s.cfg.NodeID, s.applyCascade)
	if err != nil {
		s.log.Error("sfu: cascade commands", "err", err)
		return
	}
	defer sub.Unsubscribe()
	t := time.NewTicker(cascadeReportInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			r := bus.CascadeReport{Node: s.cfg.NodeID, ID: s.casc.id, Time: now.UTC()}
			for peer, st := range s.casc.ep.LinkStats() {
				if len(r.Links) == bus.MaxCascadePeers {
					break
				}
				r.Links = append(r.Links, bus.CascadeLink{Peer: uint32(peer), RTTUs: st.RTT.Microseconds(),
					JitterUs: st.Jitter.Microseconds(), Loss: max(st.Loss, st.PeerLoss), Up: st.Up})
			}
			if err := s.bus.PublishCascadeReport(r); err != nil {
				s.log.Debug("sfu: cascade report", "err", err)
			}
		}
	}
}

// cascadeApplied is the state of the last command applied.
type cascadeApplied struct {
	lease    uint64
	epoch    uint16
	needs    map[relay.StreamKey]bool
	forwards map[relay.StreamKey]bool
	tracks   map[[3]string]bool
}

// applyCascade applies the controller's command: it replaces the node's
// peers, routes, needs and remote tracks. A command of an older lease
// than the newest applied (a deposed leader's) is ignored.
func (s *Server) applyCascade(cmd bus.CascadeCommand) {
	c := &s.casc
	c.cmdMu.Lock()
	defer c.cmdMu.Unlock()
	a := &c.applied
	if cmd.Lease < a.lease {
		c.stale.Inc()
		return
	}
	a.lease = cmd.Lease
	// The epoch first: links the peers add are made under it.
	if cmd.Epoch != a.epoch {
		if err := c.ep.SetEpoch(cmd.Epoch); err == nil {
			a.epoch = cmd.Epoch
		}
	}
	if !cmd.KeepPrev {
		c.ep.RetireEpoch()
	}
	peers := make(map[relay.NodeID]netip.AddrPort, len(cmd.Peers))
	for _, p := range cmd.Peers {
		peers[relay.NodeID(p.ID)] = p.PeerAddr()
	}
	if err := c.ep.SetPeers(peers); err != nil {
		s.log.Warn("sfu: cascade peers", "err", err)
	}
	next := make(map[relay.NodeID]relay.NodeID, len(cmd.Routes))
	for _, h := range cmd.Routes {
		next[relay.NodeID(h.Dst)] = relay.NodeID(h.Via)
	}
	c.ep.SetRoutes(cmd.Gen, next)
	subscribed := make(map[relay.StreamKey]bool, len(cmd.Tracks))
	for _, t := range cmd.Tracks {
		subscribed[relay.StreamKey{Room: t.Room, Publisher: t.Publisher, Track: t.Track.ID}] = true
	}
	needs := make(map[relay.StreamKey]bool, len(cmd.Needs))
	forwards := make(map[relay.StreamKey]bool, len(cmd.Needs))
	for _, n := range cmd.Needs {
		k := relay.StreamKey{Room: n.Room, Publisher: n.Publisher, Track: n.Track}
		dsts := make([]relay.NodeID, len(n.Nodes))
		for i, id := range n.Nodes {
			dsts[i] = relay.NodeID(id)
		}
		var err error
		if n.Relay {
			// a remote track this node holds for others: what arrives is
			// sent on, and handed to the SFU when its rooms have it
			err = c.ep.SetForward(k, dsts, subscribed[k])
		} else {
			err = c.ep.SetNeed(k, dsts)
		}
		if err != nil {
			s.log.Warn("sfu: cascade need", "err", err)
			continue
		}
		if n.Relay {
			forwards[k] = true
		} else {
			needs[k] = true
		}
	}
	for k := range a.needs {
		if !needs[k] {
			_ = c.ep.SetNeed(k, nil)
		}
	}
	for k := range a.forwards {
		if !forwards[k] {
			_ = c.ep.SetForward(k, nil, false)
		}
	}
	a.needs, a.forwards = needs, forwards
	tracks := make(map[[3]string]bool, len(cmd.Tracks))
	for _, t := range cmd.Tracks {
		ti := t.Track
		if err := s.AddRemoteTrack(RemoteTrackOf(t.Room, t.Publisher, t.Node, &ti)); err != nil {
			s.log.Warn("sfu: cascade track", "err", err)
			continue
		}
		tracks[[3]string{t.Room, t.Publisher, t.Track.ID}] = true
	}
	for k := range a.tracks {
		if !tracks[k] {
			s.RemoveRemoteTrack(k[0], k[1], k[2])
			c.ep.ForgetTrack(relay.StreamKey{Room: k[0], Publisher: k[1], Track: k[2]})
		}
	}
	a.tracks = tracks
}

// RemoteTracks returns how many remote tracks the room holds on this node
// (diagnostics and tests).
func (s *Server) RemoteTracks(room string) int {
	s.mu.Lock()
	r := s.rooms[room]
	s.mu.Unlock()
	if r == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, t := range r.tracks {
		if t.remote != nil {
			n++
		}
	}
	return n
}
