package sfu

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cascade/relay"
	"github.com/traverse-rtc/traverse/internal/rtpcodec"
)

// maxLayers is the number of simulcast layers a track may have.
const maxLayers = 3

// pubTrack is one published track: up to three simulcast layers in, and
// one downTrack per subscriber out.
type pubTrack struct {
	r        *room
	pub      *participant
	key      string
	id       string
	streamID string
	kind     webrtc.RTPCodecType
	codec    webrtc.RTPCodecParameters
	ck       rtpcodec.Codec
	levelID  uint8 // audio level extension id, 0 when absent
	nrids    int   // simulcast layers announced in the SDP

	mu     sync.Mutex // guards layers and downs' writes (copy on write)
	layers [maxLayers]*layer
	downs  atomic.Pointer[[]*downTrack]
	closed atomic.Bool
	// muted: the operator muted the track (RequestMute); its packets are
	// received (feedback, liveness) but not forwarded (mute.go).
	muted atomic.Bool
	// remote is set for a track published on another node (cascade.go):
	// pub is nil, DeliverMedia feeds it. casc, when set, is the key under
	// which forward passes a local track's packets to the relay endpoint
	// (other nodes need it).
	remote *remoteSource
	casc   atomic.Pointer[relay.StreamKey]
	// couts are the relay clients that receive the track (relaysub.go);
	// copy on write under mu.
	couts atomic.Pointer[[]*clientOut]
}

// layer is one incoming RTP stream of a track.
type layer struct {
	idx     int
	rid     string
	remote  *webrtc.TrackRemote
	bytes   atomic.Uint64 // since the last measure
	bitrate atomic.Uint64 // bit/s at the last measure
	lastPLI atomic.Int64  // unix nanoseconds
	seen    atomic.Int64  // unix nanoseconds of the last packet
	cache   *packetCache  // video only: answers subscribers' NACKs
	// size is the frame size of the layer's last keyframe that gave one
	// (package rtpcodec), width<<16 | height; 0 unknown.
	size atomic.Uint32

	mu  sync.Mutex // guards pkt, slow; held while one packet is forwarded (receive)
	pkt rtp.Packet // the packet being forwarded (reused: no allocation)
	// slow carries intercepted packets to subscribers on pion's write
	// path (recvpath.go); nil until one is needed.
	slow *slowQueue
	// slowStopped: the layer left the own receive path; no slow queue
	// may start after.
	slowStopped bool
}

func newPubTrack(r *room, p *participant, key string, remote *webrtc.TrackRemote, recv *webrtc.RTPReceiver) *pubTrack {
	t := &pubTrack{r: r, pub: p, key: key, id: remote.ID(), streamID: remote.StreamID(), kind: remote.Kind(),
		codec: remote.Codec(), ck: rtpcodec.CodecOf(remote.Codec().MimeType), nrids: len(recv.Tracks())}
	if t.streamID == "" {
		t.streamID = p.id
	}
	if t.id == "" {
		t.id = key
	}
	if t.kind == webrtc.RTPCodecTypeAudio {
		t.levelID = audioLevelID(recv)
	}
	empty := []*downTrack{}
	t.downs.Store(&empty)
	return t
}

// layerIndex orders simulcast rids low to high by their usual names; other
// names keep their SDP order.
func layerIndex(rid string, fallback int) int {
	switch strings.ToLower(rid) {
	case "q", "l", "low", "0":
		return 0
	case "h", "m", "mid", "medium", "1":
		return 1
	case "f", "high", "full", "2":
		return 2
	}
	return fallback
}

func (t *pubTrack) addLayer(remote *webrtc.TrackRemote, recv *webrtc.RTPReceiver) *layer {
	t.mu.Lock()
	defer t.mu.Unlock()
	idx := 0
	if rid := remote.RID(); rid != "" {
		fallback := 0
		for i, tr := range recv.Tracks() {
			if tr.RID() == rid {
				fallback = i
			}
		}
		idx = layerIndex(rid, fallback)
		if idx >= maxLayers {
			idx = maxLayers - 1
		}
	}
	for t.layers[idx] != nil && idx < maxLayers-1 {
		idx++
	}
	l := &layer{idx: idx, rid: remote.RID(), remote: remote}
	if t.kind == webrtc.RTPCodecTypeVideo {
		l.cache = &packetCache{}
	}
	t.layers[idx] = l
	return l
}

func (t *pubTrack) simulcast() bool { return t.nrids > 1 }

func (t *pubTrack) info() *bus.TrackInfo {
	ti := &bus.TrackInfo{ID: t.id, StreamID: t.streamID, Kind: t.kind.String(),
		Codec:     strings.TrimPrefix(strings.TrimPrefix(t.codec.MimeType, "video/"), "audio/"),
		ClockRate: t.codec.ClockRate, Channels: t.codec.Channels, Fmtp: t.codec.SDPFmtpLine, Simulcast: t.nrids}
	t.mu.Lock()
	for _, l := range t.layers {
		if l != nil && l.rid != "" {
			ti.Layers = append(ti.Layers, l.rid)
		}
	}
	t.mu.Unlock()
	return ti
}

func (t *pubTrack) addDown(d *downTrack) {
	t.mu.Lock()
	defer t.mu.Unlock()
	storeFiltered(&t.downs, nil, d)
}

func (t *pubTrack) removeDown(d *downTrack) {
	if d == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	storeFiltered(&t.downs, func(x *downTrack) bool { return x != d })
}

func (t *pubTrack) close() { t.closed.Store(true) }

// readLoop forwards one layer's packets to every subscriber until the
// publisher's track ends. With the own receive path (recvpath.go) the
// layer's SSRC is registered for interception after its first packet:
// from then on the loop only gets what pion already had in flight and
// what the interception hands back (RTX repairs go to pion anyway).
func (t *pubTrack) readLoop(l *layer) {
	buf := make([]byte, 1600)
	s := t.r.s
	var reg *recvStream
	defer func() {
		if reg != nil {
			reg.unregister()
		}
	}()
	for {
		n, _, err := l.remote.Read(buf)
		if err != nil {
			return
		}
		s.pionReceived.Add(1)
		t.receive(l, buf[:n], time.Now().UnixNano(), nil)
		if reg == nil && n >= 4 {
			reg = t.registerReceive(l, uint32(l.remote.SSRC()), uint16(buf[2])<<8|uint16(buf[3]))
		}
	}
}

// receive forwards one decrypted RTP packet of layer l to every
// subscriber; now is its arrival (unix nanoseconds). Both the layer's read
// loop and the own receive path call it: l.mu keeps one layer's packets
// from being forwarded concurrently (the downTracks' sequence rewriting
// sees them one at a time). rec, when not nil, records the packet for the
// publisher's feedback (it skipped pion's interceptors); then the caller
// (the own receive path) has corked the socket around its whole batch,
// and the fan-out does not cork again: an uncork sends the queue. It does
// not allocate.
func (t *pubTrack) receive(l *layer, raw []byte, now int64, rec receiveRecorder) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t.forward(l, raw, now, rec)
}

// forward is receive with l.mu held: the own receive path holds it from
// before it decrypts into the layer's cache (packetCache.claim).
func (t *pubTrack) forward(l *layer, raw []byte, now int64, rec receiveRecorder) {
	s := t.r.s
	pkt := &l.pkt
	if err := pkt.Unmarshal(raw); err != nil {
		s.m.badRTP.Inc()
		return
	}
	if rec != nil {
		rec.Receive(&pkt.Header, now)
	}
	if t.closed.Load() {
		return
	}
	if t.muted.Load() {
		l.seen.Store(now)
		return
	}
	s.received.Add(1)
	l.bytes.Add(uint64(len(raw)))
	l.seen.Store(now)
	if t.levelID != 0 {
		if lv, _, ok := rtpcodec.AudioLevel(pkt.GetExtension(t.levelID)); ok {
			t.pub.observeLevel(lv)
		}
	}
	if l.cache != nil {
		l.cache.put(pkt, raw)
	}
	if k := t.casc.Load(); k != nil {
		s.casc.ep.Send(*k, uint8(l.idx), raw)
	}
	video := t.kind == webrtc.RTPCodecTypeVideo
	key := video && t.ck.Keyframe(pkt.Payload)
	if key {
		l.learnSize(t.ck, pkt.Payload)
	}
	if outs := t.couts.Load(); outs != nil {
		for _, o := range *outs {
			o.send(s.casc.ep, l.idx, pkt, raw, key, video, now)
		}
	}
	downs := *t.downs.Load()
	if out := s.corkable(); out != nil && len(downs) > 1 && rec == nil {
		// One sendmmsg for the whole fan-out (package batchconn).
		out.Cork()
		for _, d := range downs {
			d.write(l.idx, pkt, key, now)
		}
		out.Uncork()
		return
	}
	if rec == nil {
		for _, d := range downs {
			d.write(l.idx, pkt, key, now)
		}
		return
	}
	// On the socket's reader goroutine: a write through pion's stack may
	// block (ICE-TCP), so those subscribers get the packet from the
	// layer's slow queue.
	slow := false
	for _, d := range downs {
		if !d.writeOwn(l.idx, pkt, key, now) {
			slow = true
		}
	}
	if slow {
		if q := t.slowQueueLocked(l); q != nil {
			q.push(raw, now)
		}
	}
}

// observeLevel smooths the participant's audio level (fast attack, slow
// decay).
func (p *participant) observeLevel(lv int) {
	old := int(p.level.Load())
	if lv > old {
		old = (old + 3*lv) / 4
	} else {
		old = (7*old + lv) / 8
	}
	p.level.Store(int32(old))
	p.levelAt.Store(time.Now().UnixNano())
}

// requestKeyframe asks the publisher for a keyframe on layer idx, at most
// once per Config.PLIInterval.
func (t *pubTrack) requestKeyframe(idx int) {
	if idx < 0 || idx >= maxLayers || t.kind != webrtc.RTPCodecTypeVideo {
		return
	}
	if t.remote != nil {
		t.remoteKeyframe(idx)
		return
	}
	t.mu.Lock()
	l := t.layers[idx]
	t.mu.Unlock()
	if l == nil {
		return
	}
	s := t.r.s
	now := time.Now().UnixNano()
	last := l.lastPLI.Load()
	if now-last < int64(s.cfg.PLIInterval) || !l.lastPLI.CompareAndSwap(last, now) {
		s.m.pliThrottled.Inc()
		return
	}
	s.m.pliForwarded.Inc()
	_ = t.pub.writeRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: uint32(l.remote.SSRC())}})
}

// measure updates every layer's bitrate.
func (t *pubTrack) measure(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, l := range t.layers {
		if l == nil {
			continue
		}
		b := l.bytes.Swap(0)
		// 500 ms between measures: an exponential average over a few.
		rate := b * 8 * 2
		old := l.bitrate.Load()
		if old == 0 {
			l.bitrate.Store(rate)
		} else {
			l.bitrate.Store((old + rate) / 2)
		}
	}
}

// bestLayer returns the highest live layer whose bitrate fits budget
// (bit/s; 0 means unknown: the highest live layer), else the lowest live
// layer, or -1 when no layer is live.
func (t *pubTrack) bestLayer(budget uint64) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now().UnixNano()
	best, lowest := -1, -1
	for i, l := range t.layers {
		if l == nil || now-l.seen.Load() > int64(time.Second) {
			continue
		}
		if lowest < 0 {
			lowest = i
		}
		if budget == 0 || l.bitrate.Load() <= budget {
			best = i
		}
	}
	if best < 0 {
		return lowest
	}
	return best
}

// downTrack is one subscriber's copy of a published track: pion binds it to
// the subscriber's sender, and it rewrites what it forwards so the
// subscriber sees one continuous stream whatever layer it comes from.
type downTrack struct {
	t   *pubTrack
	sub *participant

	// unsupported is set when the subscriber's negotiated codecs lack the
	// track's codec: the sender is bound muted and is to be removed.
	unsupported atomic.Bool

	mu   sync.Mutex // guards the fields below; held while writing
	ws   webrtc.TrackLocalWriter
	ssrc uint32
	pt   uint8
	seqRewriter
	// capLayer bounds the layer after the subscriber reported heavy loss,
	// until capUntil (unix nanoseconds); -1 when not capped.
	capLayer int
	capUntil int64
	lastStep int64
	// maxLayer is the highest layer the subscriber asked for (RequestLayer).
	maxLayer int
	// showW and showH, when either is set, are the size the subscriber
	// shows the video at (RequestLayer): maxLayer follows the layers'
	// frame sizes as keyframes tell them (refreshMaxLayer).
	showW, showH int
	// hdr is the rewritten header of the packet being written: a field, so
	// that handing its address to the TrackLocalWriter (an interface) does
	// not move a copy to the heap on every packet.
	hdr rtp.Header
	// twccID is the subscriber's transport-cc extension id, 0 when not
	// negotiated (the own data path writes it, package gcc).
	twccID uint8
	// own is the own-path writer (ownpath.go), set on the first packet
	// after the subscriber's SRTP keys are known and kept from then on:
	// every packet of the SSRC goes through it.
	own *ownOut
	// resent are the latest retransmissions, by sequence number modulo
	// their count: resend sends one sequence number at most once per
	// resendGap.
	resent [resentSlots]resentMark
}

// resentMark is one retransmission: its outgoing sequence number and when
// it was sent (unix nanoseconds).
type resentMark struct {
	seq uint16
	at  int64
}

// resendGap is the shortest interval between two retransmissions of one
// sequence number to one subscriber: NACKs for it within the gap (a
// flood, or a repeat sent before the first answer could arrive) are
// counted and dropped. Browsers and pion repeat a NACK after a round trip
// (pion every 100 ms), which the gap lets through.
const resendGap = 50 * time.Millisecond

// resentSlots is how many recent retransmissions the gap is kept for, a
// power of two (more than one NACK's span of 17 sequence numbers).
const resentSlots = 64

// Loss-based layer capping, for subscribers that send no REMB (browsers
// that negotiated transport-cc): a receiver report with more than
// lossyFraction lost takes the subscriber one layer down, at most once per
// lossStep, and the cap holds for lossHold after the last lossy report.
const (
	lossyFraction = 26 // of 256: 10 %
	lossStep      = time.Second
	lossHold      = 4 * time.Second
)

// reportLoss records a receiver report's fraction lost (of 256).
func (d *downTrack) reportLoss(fraction uint8) {
	if fraction <= lossyFraction || !d.t.simulcast() {
		return
	}
	now := time.Now().UnixNano()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.capUntil = now + int64(lossHold)
	if now-d.lastStep < int64(lossStep) {
		return
	}
	cur := d.cur
	if cur < 0 {
		cur = d.target
	}
	if d.capLayer >= 0 && d.capLayer < cur {
		cur = d.capLayer
	}
	if cur > 0 {
		d.capLayer = cur - 1
		d.lastStep = now
	} else {
		d.capLayer = 0
	}
}

// capped applies the loss cap to layer l.
func (d *downTrack) capped(l int) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	l = min(l, d.maxLayer)
	if d.capLayer < 0 {
		return l
	}
	if time.Now().UnixNano() > d.capUntil {
		d.capLayer = -1
		return l
	}
	return min(l, d.capLayer)
}

func newDownTrack(t *pubTrack, sub *participant) *downTrack {
	d := &downTrack{t: t, sub: sub, capLayer: -1, maxLayer: maxLayers - 1}
	if t.simulcast() {
		d.cur = -1
		d.target = t.bestLayer(sub.estimate())
		if d.target < 0 {
			d.target = 0
		}
	}
	return d
}

// ID, RID, StreamID and Kind make downTrack a webrtc.TrackLocal.
func (d *downTrack) ID() string                { return d.t.id }
func (d *downTrack) RID() string               { return "" }
func (d *downTrack) StreamID() string          { return d.t.streamID }
func (d *downTrack) Kind() webrtc.RTPCodecType { return d.t.kind }

// Bind picks the subscriber's codec that matches the publisher's.
func (d *downTrack) Bind(ctx webrtc.TrackLocalContext) (webrtc.RTPCodecParameters, error) {
	want := d.t.codec
	var match *webrtc.RTPCodecParameters
	for _, c := range ctx.CodecParameters() {
		if !strings.EqualFold(c.MimeType, want.MimeType) {
			continue
		}
		if c.SDPFmtpLine == want.SDPFmtpLine {
			match = &c
			break
		}
		if match == nil {
			match = &c
		}
	}
	if match == nil {
		// The subscriber cannot take this track. Failing Bind would make
		// pion abort the whole SetRemoteDescription/SetLocalDescription
		// (ErrUnsupportedCodec) after the signaling state already moved,
		// leaving the other senders and receivers unstarted. Bind muted
		// instead (nothing is written) and let the participant drop the
		// track once the negotiation is applied.
		for _, c := range ctx.CodecParameters() {
			if strings.HasSuffix(strings.ToLower(c.MimeType), "/rtx") {
				continue
			}
			d.unsupported.Store(true)
			return c, nil
		}
		return webrtc.RTPCodecParameters{}, webrtc.ErrUnsupportedCodec
	}
	d.mu.Lock()
	d.ws = ctx.WriteStream()
	d.ssrc = uint32(ctx.SSRC())
	d.pt = uint8(match.PayloadType)
	d.clock = match.ClockRate
	d.twccID = twccExtID(ctx.HeaderExtensions())
	if d.own != nil {
		d.own.twccID = d.twccID
	}
	target := d.target
	d.mu.Unlock()
	d.t.requestKeyframe(target)
	return *match, nil
}

// Unbind stops writing.
func (d *downTrack) Unbind(webrtc.TrackLocalContext) error {
	d.mu.Lock()
	d.ws = nil
	d.mu.Unlock()
	return nil
}

func (d *downTrack) outSSRC() uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ssrc
}

func (d *downTrack) layer() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.current()
}

// waiting returns the layer the subscriber waits to switch to on its next
// keyframe, or -1.
func (d *downTrack) waiting() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ws == nil || d.cur == d.target {
		return -1
	}
	return d.target
}

func (d *downTrack) setTarget(l int) {
	d.mu.Lock()
	changed := l != d.target
	d.target = l
	d.mu.Unlock()
	if changed {
		d.t.requestKeyframe(l)
	}
}

// write forwards pkt from layer idx if that is the layer this subscriber
// gets, switching to the target layer on its keyframe. now is the packet's
// arrival (unix nanoseconds). It does not allocate (TestDownTrackWriteAllocs).
func (d *downTrack) write(idx int, pkt *rtp.Packet, key bool, now int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.writeLocked(idx, pkt, key, now)
}

// writeOwn is write for the own receive path, on the socket's reader: a
// subscriber on pion's write path (onPionPath) is left to the slow queue
// and it returns false. A subscriber with an own-path writer never is:
// checking that first, under the mutex the write takes anyway, spares the
// participant's and its own data path's cache lines (onPionPath was 5 % of
// the node's CPU in rooms of 4).
func (d *downTrack) writeOwn(idx int, pkt *rtp.Packet, key bool, now int64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.own == nil && d.onPionPath() {
		return false
	}
	d.writeLocked(idx, pkt, key, now)
	return true
}

// writeLocked is write with d.mu held.
func (d *downTrack) writeLocked(idx int, pkt *rtp.Packet, key bool, now int64) {
	if d.ws == nil {
		return
	}
	ok, switched := d.admit(idx, pkt, key, d.t.kind == webrtc.RTPCodecTypeVideo, now)
	if !ok {
		return
	}
	if switched {
		d.t.r.s.m.layerSwitches.Inc()
	}
	h := &d.hdr
	*h = pkt.Header
	h.SSRC = d.ssrc
	h.PayloadType = d.pt
	h.SequenceNumber, h.Timestamp = d.next(pkt, now)
	h.Extension = false
	h.Extensions = nil
	h.ExtensionProfile = 0
	if o := d.ownLocked(); o != nil {
		if o.send(h, pkt.Payload, now) {
			d.t.r.s.forwarded.Add(1)
		}
		return
	}
	if _, err := d.ws.WriteRTP(h, pkt.Payload); err == nil {
		d.t.r.s.forwarded.Add(1)
	}
}

// Layer returns the layer (0 low to 2 high) the subscriber currently gets,
// for tests.
func (d *downTrack) Layer() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cur
}

// resendResult is what resend did with a NACKed sequence number.
type resendResult uint8

const (
	resendSent      resendResult = iota // retransmitted
	resendMissed                        // not in the cache (too old, other layer, never sent)
	resendThrottled                     // retransmitted less than resendGap ago
)

// resend answers a subscriber's NACK for outgoing sequence number seq from
// the current layer's cache, at most once per resendGap.
func (d *downTrack) resend(seq uint16, buf []byte) resendResult {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ws == nil || d.cur < 0 || !d.started {
		return resendMissed
	}
	// Only sequence numbers sent from the current layer map back to the
	// publisher's.
	if back := int(d.lastSeq - seq); back >= d.epochLen {
		return resendMissed
	}
	now := time.Now().UnixNano()
	mark := &d.resent[seq%resentSlots]
	if mark.at != 0 && mark.seq == seq && now-mark.at < int64(resendGap) {
		return resendThrottled
	}
	d.t.mu.Lock()
	l := d.t.layers[d.cur]
	d.t.mu.Unlock()
	if l == nil || l.cache == nil {
		return resendMissed
	}
	hdr, payload, ok := l.cache.get(seq-d.seqOff, buf)
	if !ok {
		return resendMissed
	}
	h := &d.hdr
	*h = hdr
	h.SSRC = d.ssrc
	h.PayloadType = d.pt
	h.SequenceNumber = seq
	h.Timestamp += d.tsOff
	mark.seq, mark.at = seq, now
	if o := d.ownLocked(); o != nil {
		if o.send(h, payload, now) {
			return resendSent
		}
		return resendMissed
	}
	if _, err := d.ws.WriteRTP(h, payload); err != nil {
		return resendMissed
	}
	return resendSent
}
