package loadgen

import (
	"context"
	"encoding/binary"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

// publish sends video at the configured bitrate in 10 ms ticks (a VP8
// frame every 3 ticks, a keyframe every 3 s or when asked) and a 20 ms
// Opus-sized audio packet every other tick.
func (c *Client) publish(ctx context.Context) {
	select {
	case <-c.connected:
	case <-ctx.Done():
		return
	}
	p := newPublisher(c)
	// Catching up at most 100 ms at once.
	Pace(ctx, 10*time.Millisecond, 10, func(tick uint32) {
		p.tick = tick
		p.step()
	})
}

// publisher is the state of publish's loop: per video layer its sequence
// number, the bytes it is owed and whether a keyframe or a new frame is
// due.
type publisher struct {
	c       *Client
	size    int    // video packet size
	payload []byte // reused for every video packet
	audio   []byte
	// Per video layer (index into c.videoTracks).
	seqs       []uint16
	credit     []float64 // bytes owed, so each layer keeps its bitrate
	rates      []float64 // bytes per 10 ms tick
	keyPending []bool
	frameStart []bool
	// Simulcast layers carry the mid and rid header extensions (RFC 8852)
	// so the SFU can tell them apart; audio the audio level (RFC 6464).
	midID, ridID, levelID uint8
	mid                   string
	level                 []byte

	tick     uint32
	aseq     uint16
	lastKey  time.Time
	keyEvery time.Duration
	// lastStamp is the last OnVideoSent time, so that each is unique.
	lastStamp int64
}

func newPublisher(c *Client) *publisher {
	nl := len(c.videoTracks)
	p := &publisher{c: c, size: c.cfg.PacketSize, audio: make([]byte, 120), seqs: make([]uint16, nl),
		credit: make([]float64, nl), rates: make([]float64, nl), keyPending: make([]bool, nl), frameStart: make([]bool, nl),
		level: []byte{0x80 | c.cfg.AudioLevel&0x7f}, keyEvery: c.cfg.KeyframeInterval}
	p.payload = make([]byte, max(p.size, vp8KeyHeaderLen))
	p.audio[0] = 0x78
	for i := range p.rates {
		p.rates[i] = float64(c.cfg.VideoBitrate) / 8 / 100 // bytes per 10 ms tick
		if nl == 3 {
			p.rates[i] /= float64(int(1) << (2 - i)) // q = 1/4, h = 1/2, f = 1
		}
		p.frameStart[i] = true
	}
	if p.keyEvery <= 0 {
		p.keyEvery = 3 * time.Second
	}
	if c.cfg.Simulcast {
		for _, tr := range c.PC().GetTransceivers() {
			if tr.Kind() != webrtc.RTPCodecTypeVideo || tr.Sender() == nil {
				continue
			}
			p.mid = tr.Mid()
			for _, e := range tr.Sender().GetParameters().HeaderExtensions {
				switch e.URI {
				case sdp.SDESMidURI:
					p.midID = uint8(e.ID)
				case sdp.SDESRTPStreamIDURI:
					p.ridID = uint8(e.ID)
				}
			}
		}
	}
	if c.cfg.AudioLevel != 0 {
		for _, tr := range c.PC().GetTransceivers() {
			if tr.Kind() == webrtc.RTPCodecTypeAudio && tr.Sender() != nil {
				for _, e := range tr.Sender().GetParameters().HeaderExtensions {
					if e.URI == sdp.AudioLevelURI {
						p.levelID = uint8(e.ID)
					}
				}
			}
		}
	}
	return p
}

// step sends the packets of 10 ms tick p.tick.
func (p *publisher) step() {
	c := p.c
	ts := (p.tick / 3) * 2700 // 90 kHz, 30 frames/s
	if c.keyframe.Swap(false) || time.Since(p.lastKey) > p.keyEvery {
		p.lastKey = time.Now()
		for i := range p.keyPending {
			p.keyPending[i] = true
		}
	}
	endFrame := p.tick%3 == 0
	for i, tr := range c.videoTracks {
		if i < len(c.layerOff) && c.layerOff[i].Load() {
			continue
		}
		if i < len(c.layerOn) && c.layerOn[i].Swap(false) {
			p.keyPending[i] = true
		}
		p.video(i, tr, ts, endFrame)
	}
	if p.tick%2 == 0 && c.audioTrack != nil {
		p.aseq++
		ap := rtp.Packet{Header: rtp.Header{Version: 2, SequenceNumber: p.aseq, Timestamp: p.tick * 480}, Payload: p.audio}
		if p.levelID != 0 {
			_ = ap.Header.SetExtension(p.levelID, p.level)
		}
		if c.audioTrack.WriteRTP(&ap) == nil {
			c.sent.Add(1)
		}
	}
}

// video sends layer i's packets of this tick: what its credit pays for,
// the rest of the frame at a frame's end.
func (p *publisher) video(i int, tr *webrtc.TrackLocalStaticRTP, ts uint32, endFrame bool) {
	c, size, payload := p.c, p.size, p.payload
	p.credit[i] += p.rates[i]
	for p.credit[i] >= float64(size) || (endFrame && p.credit[i] > 0) {
		n := size
		if p.credit[i] < float64(size) {
			n = max(int(p.credit[i]), 16)
		}
		p.credit[i] -= float64(n)
		marker := endFrame && p.credit[i] < float64(size)
		payload[0] = 0x00
		if p.frameStart[i] {
			payload[0] = 0x10 // S=1, PID=0
		}
		payload[1] = 0x01 // not a keyframe
		if p.keyPending[i] && p.frameStart[i] {
			n = max(n, vp8KeyHeaderLen)
			c.vp8KeyHeader(payload, len(p.seqs)-1-i)
			p.keyPending[i] = false
		}
		payload[2] = byte(i) // the layer, for the subscriber's sake
		p.frameStart[i] = marker
		var stamp int64
		if c.cfg.OnVideoSent != nil && n >= vp8KeyHeaderLen+8 {
			stamp = max(time.Now().UnixNano(), p.lastStamp+1)
			p.lastStamp = stamp
			binary.BigEndian.PutUint64(payload[n-8:n], uint64(stamp))
		}
		p.seqs[i]++
		pkt := rtp.Packet{Header: rtp.Header{Version: 2, Marker: marker, SequenceNumber: p.seqs[i], Timestamp: ts}, Payload: payload[:n]}
		if p.midID != 0 && p.ridID != 0 {
			_ = pkt.Header.SetExtension(p.midID, []byte(p.mid))
			_ = pkt.Header.SetExtension(p.ridID, []byte(tr.RID()))
		}
		if tr.WriteRTP(&pkt) == nil {
			c.sent.Add(1)
			if stamp != 0 {
				c.cfg.OnVideoSent(stamp)
			}
		}
		if marker {
			break
		}
	}
}

// readPublisherRTCP reads the SFU's RTCP to the publisher on pc's senders
// (until pc closes): a PLI or FIR makes the next frame a keyframe.
func (c *Client) readPublisherRTCP(pc *webrtc.PeerConnection) {
	for _, tr := range pc.GetTransceivers() {
		s := tr.Sender()
		if s == nil {
			continue
		}
		for _, enc := range s.GetParameters().Encodings {
			rid := enc.RID
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				for {
					var pkts []rtcp.Packet
					var err error
					if rid != "" {
						pkts, _, err = s.ReadSimulcastRTCP(rid)
					} else {
						pkts, _, err = s.ReadRTCP()
					}
					if err != nil {
						return
					}
					for _, p := range pkts {
						switch p.(type) {
						case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
							c.keyframe.Store(true)
						}
					}
				}
			}()
		}
	}
}

// SetREMB makes the client advertise bps in REMB to the SFU every 100 ms
// (0 stops it): how a test caps a subscriber's downlink.
func (c *Client) SetREMB(bps uint64) { c.remb.Store(bps) }

func (c *Client) sendREMB(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		b := c.remb.Load()
		if b == 0 {
			continue
		}
		var ssrcs []uint32
		pc := c.PC()
		for _, tr := range pc.GetTransceivers() {
			if r := tr.Receiver(); r != nil && r.Track() != nil && r.Track().Kind() == webrtc.RTPCodecTypeVideo {
				ssrcs = append(ssrcs, uint32(r.Track().SSRC()))
			}
		}
		if len(ssrcs) == 0 {
			continue
		}
		_ = pc.WriteRTCP([]rtcp.Packet{&rtcp.ReceiverEstimatedMaximumBitrate{Bitrate: float32(b), SSRCs: ssrcs}})
	}
}

// vp8KeyHeaderLen is the VP8 payload descriptor and key frame header the
// publisher writes (RFC 7741 section 4.2, RFC 6386 section 9.1).
const vp8KeyHeaderLen = 11

// vp8KeyHeader writes a key frame's payload descriptor and header into p:
// the frame tag (key frame, shown), the start code and the frame size, the
// top layer's halved down times (the byte after the tag's first is the
// layer index the subscriber reads, part of the partition size here).
func (c *Client) vp8KeyHeader(p []byte, down int) {
	w, h := c.cfg.VideoWidth, c.cfg.VideoHeight
	if w <= 0 || h <= 0 {
		w, h = 1280, 720
	}
	w, h = max(w>>down, 1), max(h>>down, 1)
	p[1], p[3] = 0x10, 0x00
	p[4], p[5], p[6] = 0x9d, 0x01, 0x2a
	binary.LittleEndian.PutUint16(p[7:], uint16(min(w, 0x3fff)))
	binary.LittleEndian.PutUint16(p[9:], uint16(min(h, 0x3fff)))
}

// VideoStamp is the send time OnVideoSent's publisher wrote into a video
// payload, 0 when the payload is too short to hold one.
func VideoStamp(payload []byte) int64 {
	if len(payload) < vp8KeyHeaderLen+8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(payload[len(payload)-8:]))
}
