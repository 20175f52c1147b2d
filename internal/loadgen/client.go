// Package loadgen is a synthetic WebRTC load generator for the SFU: pion
// clients that join rooms, publish real RTP at video bitrates (VP8-framed
// packets, optionally three simulcast layers, and Opus-sized audio) and
// subscribe to everyone else, measuring what they receive (packets, loss
// from sequence gaps, RFC 3550 interarrival jitter) and how long joining
// took. `traverse load`, the SFU's tests and the Janus benchmark use it.
package loadgen

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/webrtc/v4"
)

// Signaler is how a client reaches the SFU: the bus directly, or signal's
// WebSocket protocol.
type Signaler interface {
	// Join sends the client's offer and returns the SFU's answer.
	Join(ctx context.Context, room, identity string, publish, subscribe bool, offer string) (string, error)
	// Offers delivers the SFU's renegotiation offers, in order, only
	// after Join has returned.
	Offers() <-chan string
	// Answer sends the client's answer to the last offer.
	Answer(ctx context.Context, sdp string) error
	// Close leaves and releases the signaling connection.
	Close() error
}

// ClientConfig describes one synthetic participant.
type ClientConfig struct {
	Room      string
	Identity  string
	Publish   bool
	Subscribe bool
	// Simulcast publishes three video layers (rids q, h, f) at a quarter,
	// half and all of VideoBitrate.
	Simulcast bool
	// VideoBitrate is the top layer's rate in bit/s (default 1 Mbps); 0
	// with Publish still sends audio. Negative disables video.
	VideoBitrate int
	// PacketSize is the video RTP payload size (default 1200 bytes).
	PacketSize int
	// TCP makes the client use ICE-TCP only.
	TCP bool
	// KeyframeInterval is how often the publisher sends a keyframe
	// unasked (default 3 s); it always sends one when asked (PLI, FIR).
	KeyframeInterval time.Duration
	// VideoWidth and VideoHeight are the top layer's frame size that the
	// keyframes' VP8 headers give (default 1280x720); simulcast layers
	// below are a half and a quarter of it, as browsers scale them.
	VideoWidth, VideoHeight int
	// AudioLevel, when not zero, is sent in the RFC 6464 audio level
	// extension of every audio packet, as -dBov (1 loud to 127 silent).
	AudioLevel uint8
	// OnVideoSent, when set, makes the publisher write a send time into
	// the last 8 bytes of every video packet's payload of at least 19
	// bytes (Unix nanoseconds, big-endian, unique and increasing; see
	// VideoStamp) and call it with that time once the packet is written.
	OnVideoSent func(stamp int64)
	// OnVideo, when set, is called from a subscriber's receive loop with
	// each received video packet's payload (valid during the call only)
	// and its arrival time.
	OnVideo func(payload []byte, at time.Time)
}

// Client is one synthetic participant.
type Client struct {
	cfg ClientConfig
	sig Signaler
	api *webrtc.API

	// pcMu guards pc and dc, which a rejoin replaces (rejoin.go).
	pcMu sync.RWMutex
	pc   *webrtc.PeerConnection
	// negMu is held while an offer of the node is applied and while a
	// rejoin replaces the peer connection.
	negMu sync.Mutex

	connected chan struct{}
	connOnce  sync.Once
	joinStart time.Time
	joinTime  atomic.Int64 // nanoseconds from start to connected

	videoTracks []*webrtc.TrackLocalStaticRTP
	audioTrack  *webrtc.TrackLocalStaticRTP
	keyframe    atomic.Bool
	// layerOff: the video layer of that index is not sent (StopLayer);
	// layerOn: it was sent again, and starts with a keyframe.
	layerOff, layerOn [3]atomic.Bool

	mu     sync.Mutex // guards tracks
	tracks []*RecvStats

	dc      *webrtc.DataChannel
	dataMu  sync.Mutex // guards data, rejoins
	rejoins []rejoin
	data    []string // data-channel messages received

	remb atomic.Uint64 // bit/s to advertise in REMB, 0 none
	sent atomic.Uint64 // RTP packets published

	wg     sync.WaitGroup
	cancel context.CancelFunc
	once   sync.Once
}

// Dial creates a client, joins through sig and starts publishing once
// connected. It returns when the join answer is applied; Connected tells
// when media flows.
func Dial(ctx context.Context, api *webrtc.API, sig Signaler, cfg ClientConfig) (*Client, error) {
	if cfg.VideoBitrate == 0 {
		cfg.VideoBitrate = 1_000_000
	}
	if cfg.PacketSize <= 0 {
		cfg.PacketSize = 1200
	}
	c, cctx, err := newClient(api, sig, cfg)
	if err != nil {
		return nil, err
	}
	pc := c.pc
	offer, err := c.prepare(ctx, pc)
	if err != nil {
		c.Close()
		return nil, err
	}
	answer, err := sig.Join(ctx, cfg.Room, cfg.Identity, cfg.Publish, cfg.Subscribe, offer)
	if err != nil {
		c.Close()
		return nil, err
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		c.Close()
		return nil, fmt.Errorf("loadgen: apply answer: %w", err)
	}
	c.wg.Add(1)
	go func() { defer c.wg.Done(); c.renegotiate(cctx) }()
	if cfg.Publish {
		c.wg.Add(1)
		go func() { defer c.wg.Done(); c.publish(cctx) }()
		c.readPublisherRTCP(pc)
	}
	c.wg.Add(1)
	go func() { defer c.wg.Done(); c.sendREMB(cctx) }()
	if r, ok := sig.(rejoiner); ok {
		c.wg.Add(1)
		go func() { defer c.wg.Done(); c.rejoinLoop(cctx, r) }()
	}
	return c, nil
}

// prepare gives pc the client's data channel and, when it publishes, its
// tracks (made on the first call, the same ones after a rejoin), and
// returns its offer with every candidate gathered.
func (c *Client) prepare(ctx context.Context, pc *webrtc.PeerConnection) (string, error) {
	dc, err := pc.CreateDataChannel("data", nil)
	if err != nil {
		return "", err
	}
	c.pcMu.Lock()
	c.dc = dc
	c.pcMu.Unlock()
	dc.OnMessage(func(m webrtc.DataChannelMessage) {
		c.dataMu.Lock()
		c.data = append(c.data, string(m.Data))
		c.dataMu.Unlock()
	})
	if c.cfg.Publish {
		if err := c.addTracks(pc); err != nil {
			return "", err
		}
	}
	offer, err := pc.CreateOffer(nil)
	if err == nil {
		err = c.setLocalGathered(ctx, pc, offer)
	}
	if err != nil {
		return "", err
	}
	return pc.LocalDescription().SDP, nil
}

// addTracks adds the client's tracks to pc, making them on the first call.
func (c *Client) addTracks(pc *webrtc.PeerConnection) error {
	if c.audioTrack != nil {
		// A rejoin's new peer connection: the publisher goes on writing
		// the same tracks, which now feed it.
		if len(c.videoTracks) > 0 {
			tr, err := pc.AddTransceiverFromTrack(c.videoTracks[0], webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
			if err != nil {
				return err
			}
			for _, t := range c.videoTracks[1:] {
				if err := tr.Sender().AddEncoding(t); err != nil {
					return err
				}
			}
		}
		_, err := pc.AddTransceiverFromTrack(c.audioTrack, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		return err
	}
	stream := c.cfg.Identity
	if c.cfg.VideoBitrate > 0 {
		vp8 := webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}
		if c.cfg.Simulcast {
			var tr *webrtc.RTPTransceiver
			for _, rid := range []string{"q", "h", "f"} {
				t, err := webrtc.NewTrackLocalStaticRTP(vp8, "video", stream, webrtc.WithRTPStreamID(rid))
				if err != nil {
					return err
				}
				c.videoTracks = append(c.videoTracks, t)
				if tr == nil {
					if tr, err = pc.AddTransceiverFromTrack(t, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
						return err
					}
				} else if err := tr.Sender().AddEncoding(t); err != nil {
					return err
				}
			}
		} else {
			t, err := webrtc.NewTrackLocalStaticRTP(vp8, "video", stream)
			if err != nil {
				return err
			}
			c.videoTracks = append(c.videoTracks, t)
			if _, err := pc.AddTransceiverFromTrack(t, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
				return err
			}
		}
	}
	a, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", stream)
	if err != nil {
		return err
	}
	c.audioTrack = a
	_, err = pc.AddTransceiverFromTrack(a, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
	return err
}

// renegotiate answers the SFU's offers.
func (c *Client) renegotiate(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case offer, ok := <-c.sig.Offers():
			if !ok {
				return
			}
			c.negMu.Lock()
			c.answerOffer(ctx, c.PC(), offer)
			c.negMu.Unlock()
		}
	}
}

func (c *Client) answerOffer(ctx context.Context, pc *webrtc.PeerConnection, offer string) {
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		return
	}
	answer, err := pc.CreateAnswer(nil)
	if err != nil {
		return
	}
	if err := pc.SetLocalDescription(answer); err != nil {
		return
	}
	_ = c.sig.Answer(ctx, answer.SDP)
}

// SendData sends a text message on the client's data channel.
func (c *Client) SendData(s string) error {
	c.pcMu.RLock()
	dc := c.dc
	c.pcMu.RUnlock()
	return dc.SendText(s)
}

// Data returns the data-channel messages received so far.
func (c *Client) Data() []string {
	c.dataMu.Lock()
	defer c.dataMu.Unlock()
	return append([]string(nil), c.data...)
}

// StopLayer stops sending video layer i of a simulcast publisher (0
// lowest), or sends it again (starting with a keyframe), as a browser
// drops its top layers when its uplink estimate or a bandwidth cap is
// short and takes them up again.
func (c *Client) StopLayer(i int, stop bool) {
	if i < 0 || i >= len(c.layerOff) {
		return
	}
	if !stop && c.layerOff[i].Load() {
		c.layerOn[i].Store(true)
	}
	c.layerOff[i].Store(stop)
}

// Sent is how many RTP packets the client published.
func (c *Client) Sent() uint64 { return c.sent.Load() }

// Connected is closed once the peer connection is connected.
func (c *Client) Connected() <-chan struct{} { return c.connected }

// JoinTime is the time from Dial to connected (0 before).
func (c *Client) JoinTime() time.Duration { return time.Duration(c.joinTime.Load()) }

// Tracks returns the statistics of every track the client receives.
func (c *Client) Tracks() []*RecvStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*RecvStats(nil), c.tracks...)
}

// Receiving counts the video and the audio tracks the client receives that
// delivered at least min packets each.
func (c *Client) Receiving(min uint64) (video, audio int) {
	for _, t := range c.Tracks() {
		if t.Packets() < min {
			continue
		}
		switch t.Kind {
		case "video":
			video++
		case "audio":
			audio++
		}
	}
	return video, audio
}

// Receives reports whether at least video video tracks and audio audio
// tracks have each brought the client min packets or more.
func (c *Client) Receives(video, audio int, min uint64) bool {
	v, a := c.Receiving(min)
	return v >= video && a >= audio
}

// PC returns the peer connection (after a rejoin, the new one).
func (c *Client) PC() *webrtc.PeerConnection {
	c.pcMu.RLock()
	defer c.pcMu.RUnlock()
	return c.pc
}

// Close leaves and closes the peer connection. It is idempotent.
func (c *Client) Close() error {
	var err error
	c.once.Do(func() {
		c.cancel()
		c.negMu.Lock() // a rejoin in progress finishes first
		err = errors.Join(c.sig.Close(), c.PC().Close())
		c.negMu.Unlock()
		c.wg.Wait()
	})
	return err
}

// NewSessionID returns a random session id valid on the bus.
func NewSessionID() string {
	var b [9]byte
	_, _ = rand.Read(b[:])
	return "s" + hex.EncodeToString(b[:])
}

// dialOffered makes a receive-only client for a server that offers first
// (a Janus subscriber): it answers offer through sig.Answer.
func dialOffered(ctx context.Context, api *webrtc.API, sig Signaler, offer string) (*Client, error) {
	c, _, err := newClient(api, sig, ClientConfig{Subscribe: true})
	if err != nil {
		sig.Close()
		return nil, err
	}
	err = c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer})
	var answer webrtc.SessionDescription
	if err == nil {
		answer, err = c.pc.CreateAnswer(nil)
	}
	if err == nil {
		err = c.setLocalGathered(ctx, c.pc, answer)
	}
	if err == nil {
		err = sig.Answer(ctx, c.pc.LocalDescription().SDP)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// newClient makes a client's peer connection, which counts the client
// connected once it is and measures every track it receives. The context
// returned ends at Close.
func newClient(api *webrtc.API, sig Signaler, cfg ClientConfig) (*Client, context.Context, error) {
	c := &Client{cfg: cfg, sig: sig, api: api, connected: make(chan struct{}), joinStart: time.Now()}
	pc, err := c.newPC()
	if err != nil {
		return nil, nil, err
	}
	c.pc = pc
	cctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	return c, cctx, nil
}

// newPC makes a peer connection that counts the client connected once it
// is (the first time) and measures every track it receives.
func (c *Client) newPC() (*webrtc.PeerConnection, error) {
	pc, err := c.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, err
	}
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			c.connOnce.Do(func() {
				c.joinTime.Store(int64(time.Since(c.joinStart)))
				close(c.connected)
			})
		}
	})
	pc.OnTrack(func(t *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		st := &RecvStats{Kind: t.Kind().String(), clock: t.Codec().ClockRate}
		if st.Kind == "video" {
			st.onVideo = c.cfg.OnVideo
		}
		c.mu.Lock()
		c.tracks = append(c.tracks, st)
		c.mu.Unlock()
		st.read(t)
	})
	return pc, nil
}

// setLocalGathered sets the local description and waits until ICE
// gathering is complete (the signalers send no trickled candidates).
func (c *Client) setLocalGathered(ctx context.Context, pc *webrtc.PeerConnection, d webrtc.SessionDescription) error {
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(d); err != nil {
		return err
	}
	select {
	case <-gathered:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
