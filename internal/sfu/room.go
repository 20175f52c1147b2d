package sfu

import (
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cascade/relay"
	"github.com/traverse-rtc/traverse/internal/rtpcodec"
)

// room is the participants of one room on this node and their tracks.
type room struct {
	s    *Server
	name string

	mu       sync.Mutex // guards parts, tracks, speakers
	parts    map[string]*participant
	tracks   map[string]*pubTrack // by pubTrack.key
	speakers string               // the last active-speaker list sent
	// clients are the relay clients present (relaysub.go): the room
	// lives while they are, as while participants are.
	clients map[relay.ClientID]*relayPeer
}

func newRoom(s *Server, name string) *room {
	return &room{s: s, name: name, parts: map[string]*participant{}, tracks: map[string]*pubTrack{},
		clients: map[relay.ClientID]*relayPeer{}}
}

func (r *room) others(p *participant) []*participant {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*participant, 0, len(r.parts))
	for _, o := range r.parts {
		if o != p {
			out = append(out, o)
		}
	}
	return out
}

func (r *room) tracksExcept(p *participant) []*pubTrack {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*pubTrack, 0, len(r.tracks))
	for _, t := range r.tracks {
		if t.pub != p {
			out = append(out, t)
		}
	}
	return out
}

// addLayer records an incoming track (one simulcast layer of it); isNew
// is true for a track's first layer.
func (r *room) addLayer(p *participant, remote *webrtc.TrackRemote, recv *webrtc.RTPReceiver) (*pubTrack, *layer, bool) {
	if !p.canPub {
		return nil, nil, false
	}
	key := p.id + "/" + remote.ID()
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.parts[p.id]; !ok {
		return nil, nil, false // left already
	}
	t := r.tracks[key]
	isNew := t == nil
	if isNew {
		t = newPubTrack(r, p, key, remote, recv)
		r.tracks[key] = t
	}
	return t, t.addLayer(remote, recv), isNew
}

// removeTracksOf takes p's tracks out of the room and returns them.
func (r *room) removeTracksOf(p *participant) []*pubTrack {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*pubTrack
	for k, t := range r.tracks {
		if t.pub == p {
			out = append(out, t)
			delete(r.tracks, k)
		}
	}
	return out
}

// updateSpeakers publishes an active-speaker event when the set of
// participants speaking (loudest first) changes.
func (r *room) updateSpeakers() {
	now := time.Now().UnixNano()
	var sp []bus.Speaker
	for _, p := range r.others(nil) {
		if now-p.levelAt.Load() > int64(time.Second) {
			continue
		}
		if l := int(p.level.Load()); l >= speakingLevel {
			sp = append(sp, bus.Speaker{Session: p.id, Identity: p.identity, Level: l})
		}
	}
	sort.Slice(sp, func(i, j int) bool { return sp[i].Level > sp[j].Level })
	if len(sp) > 3 {
		sp = sp[:3]
	}
	var b strings.Builder
	for _, x := range sp {
		b.WriteString(x.Session)
		b.WriteByte(',')
	}
	key := b.String()
	r.mu.Lock()
	changed := key != r.speakers
	r.speakers = key
	r.mu.Unlock()
	if changed {
		r.s.publishEvent(bus.RoomEvent{Type: bus.EventActiveSpeaker, Room: r.name, Speakers: sp})
	}
}

// speakingLevel is the smoothed level (127 - dBov) above which a
// participant counts as speaking: -60 dBov.
const speakingLevel = 67

// updateLayers measures every layer's bitrate and chooses each
// subscriber's simulcast layers for its bandwidth.
func (r *room) updateLayers() {
	r.mu.Lock()
	tracks := slices.Collect(maps.Values(r.tracks))
	r.mu.Unlock()
	now := time.Now()
	for _, t := range tracks {
		t.measure(now)
	}
	for _, p := range r.others(nil) {
		p.chooseLayers()
	}
	for _, t := range tracks {
		t.chooseClientLayers()
	}
}

// layerReceiver is one receiver of a simulcast track whose layer the SFU
// chooses (chooseLayer): a WebRTC subscriber's downTrack, or a relay
// client's clientOut under a one-layer choice (relaysub.go). Both forward
// through a seqRewriter: its target is the layer wanted, switched to at
// that layer's next keyframe.
type layerReceiver interface {
	// layer is the layer forwarded (before the first: the target).
	layer() int
	// capped bounds a layer by what the receiver asked for.
	capped(l int) int
	// setTarget makes l the target (asking for its keyframe when it
	// changed).
	setTarget(l int)
	// waiting is the target while the receiver waits for its keyframe,
	// else -1.
	waiting() int
}

// chooseLayer gives one receiver of t the best live layer that fits
// budget (bit/s, 0 unknown: the highest live), at most the layer it asked
// for: while that layer is not live (its publisher stopped sending it),
// the best live layer below it. A layer above the one forwarded must fit
// with upMargin to spare: an estimate hovering at a layer's rate would
// otherwise switch it on and off. A receiver waiting for a keyframe of its
// target asks again every round (throttled per layer): the first request
// can go before the layer arrives, and browsers send none unasked.
func (t *pubTrack) chooseLayer(rx layerReceiver, budget uint64) {
	if l := t.bestLayer(budget); l >= 0 {
		if cur := rx.layer(); l > cur && budget > 0 {
			l = max(min(l, t.bestLayer(budget*100/(100+upMargin))), cur)
		}
		rx.setTarget(rx.capped(l))
	}
	if w := rx.waiting(); w >= 0 {
		t.requestKeyframe(w)
	}
}

// chooseLayers gives each simulcast video track the participant receives
// the best layer that fits an equal share of its estimated bandwidth, less
// what its other tracks (audio, video without simulcast) take
// (chooseLayer).
func (p *participant) chooseLayers() {
	p.negMu.Lock()
	var sim []*downTrack
	var other uint64
	for t, dt := range p.downs {
		if t.simulcast() {
			sim = append(sim, dt)
		} else {
			other += t.bitrate()
		}
	}
	p.negMu.Unlock()
	if len(sim) == 0 {
		return
	}
	bwe := p.estimate()
	if bwe > 0 {
		p.s.m.subscriberEstimate.Observe(float64(bwe))
	}
	for _, dt := range sim {
		dt.refreshMaxLayer()
		budget := uint64(0)
		if bwe > 0 {
			budget = max(bwe-min(other, bwe), 1) / uint64(len(sim))
		}
		dt.t.chooseLayer(dt, budget)
	}
}

// upMargin is how much more than a higher layer's bitrate (percent) a
// subscriber's share must be to move up to it.
const upMargin = 15

// bitrate returns the track's measured bit/s (its layers summed: a track
// without simulcast has one).
func (t *pubTrack) bitrate() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b uint64
	for _, l := range t.layers {
		if l != nil {
			b += l.bitrate.Load()
		}
	}
	return b
}

// setMaxLayer caps the layer of the received tracks a layer request names
// (Track "*": all; StreamID, when set, narrows to that msid stream), at
// MaxLayer or at the layer for the size the client shows them at.
func (p *participant) setMaxLayer(req *bus.LayerRequest) error {
	p.negMu.Lock()
	var downs []*downTrack
	for t, dt := range p.downs {
		if (req.Track == "*" || t.id == req.Track) && (req.StreamID == "" || t.streamID == req.StreamID) {
			downs = append(downs, dt)
		}
	}
	p.negMu.Unlock()
	if len(downs) == 0 {
		return bus.Errorf(bus.StatusNotFound, "session %s receives no track %q (stream %q)", p.id, req.Track, req.StreamID)
	}
	for _, dt := range downs {
		dt.mu.Lock()
		dt.maxLayer, dt.showW, dt.showH = req.MaxLayer, req.Width, req.Height
		dt.mu.Unlock()
		dt.refreshMaxLayer()
	}
	p.chooseLayers()
	return nil
}

// refreshMaxLayer caps a subscriber that asked by size at the layer for
// that size, as far as the layers' sizes are known now.
func (d *downTrack) refreshMaxLayer() {
	d.mu.Lock()
	w, h := d.showW, d.showH
	d.mu.Unlock()
	if w <= 0 && h <= 0 {
		return
	}
	l := d.t.layerForSize(w, h)
	d.mu.Lock()
	if d.showW == w && d.showH == h {
		d.maxLayer = l
	}
	d.mu.Unlock()
}

// Nominal sizes of the simulcast layers, as browsers send them from a
// 1280x720 camera (scaleResolutionDownBy 4, 2 and 1): the size of a layer
// none of whose keyframes told its own yet.
var layerSizes = [maxLayers][2]int{{320, 180}, {640, 360}, {1280, 720}}

// layerForSize returns the lowest layer the publisher sends whose frame
// size covers a video shown at w x h device pixels (0 for either: any),
// the top layer when none does. A layer's size is its keyframes' (a
// 640x480 camera's layers are 160x120, 320x240 and 640x480, and a browser
// may leave the lowest out), nominal (layerSizes) until one came.
func (t *pubTrack) layerForSize(w, h int) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, l := range t.layers {
		if l == nil {
			continue
		}
		lw, lh := l.frameSize()
		if lw == 0 {
			lw, lh = layerSizes[i][0], layerSizes[i][1]
		}
		if w <= lw && h <= lh {
			return i
		}
	}
	return maxLayers - 1
}

// learnSize records the frame size the keyframe payload p of format c
// gives, if it gives one.
func (l *layer) learnSize(c rtpcodec.Codec, p []byte) {
	if w, h, ok := c.FrameSize(p); ok {
		l.size.Store(uint32(min(w, 0xffff))<<16 | uint32(min(h, 0xffff)))
	}
}

// frameSize returns the layer's learned frame size, 0x0 when unknown.
func (l *layer) frameSize() (w, h int) {
	v := l.size.Load()
	return int(v >> 16), int(v & 0xffff)
}

// audioLevelID returns the negotiated id of the RFC 6464 extension on recv.
func audioLevelID(recv *webrtc.RTPReceiver) uint8 {
	for _, e := range recv.GetParameters().HeaderExtensions {
		if e.URI == sdp.AudioLevelURI {
			return uint8(e.ID)
		}
	}
	return 0
}
