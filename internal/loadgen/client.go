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
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
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
}

// Client is one synthetic participant.
type Client struct {
	cfg ClientConfig
	sig Signaler
	pc  *webrtc.PeerConnection

	connected chan struct{}
	joinStart time.Time
	joinTime  atomic.Int64 // nanoseconds from start to connected

	videoTracks []*webrtc.TrackLocalStaticRTP
	audioTrack  *webrtc.TrackLocalStaticRTP
	keyframe    atomic.Bool

	mu     sync.Mutex // guards tracks
	tracks []*RecvStats

	dc     *webrtc.DataChannel
	dataMu sync.Mutex // guards data
	data   []string   // data-channel messages received

	remb atomic.Uint64 // bit/s to advertise in REMB, 0 none
	sent atomic.Uint64 // RTP packets published

	wg     sync.WaitGroup
	cancel context.CancelFunc
	once   sync.Once
}

// NewAPI returns the pion API load clients use: default codecs, the
// simulcast header extensions, and no per-packet interceptors (a load
// client must stay cheap) unless WithFeedback. Clients gather host
// candidates on loopback only, or only on ip when it is valid.
func NewAPI(tcp bool, ip netip.Addr, opts ...APIOption) (*webrtc.API, error) {
	var o apiOptions
	for _, f := range opts {
		f(&o)
	}
	return newAPI(tcp, ip, false, o.feedback)
}

// NewDuplicateTolerantAPI is NewAPI with SRTP replay protection off, for
// tests that check a retransmission of a packet the client already has.
func NewDuplicateTolerantAPI() (*webrtc.API, error) { return newAPI(false, netip.Addr{}, true, false) }

// APIOption changes what the clients of NewAPI do.
type APIOption func(*apiOptions)

type apiOptions struct {
	feedback bool
}

// WithFeedback(true) makes the clients behave like browsers on RTCP:
// pion's NACK generator and responder (RFC 4585 generic NACK, nack and
// nack pli negotiated for video), sender and receiver reports (RFC 3550
// section 6.4), transport-wide sequence numbers on every packet they send
// and transport-cc feedback on what they receive
// (draft-holmer-rmcat-transport-wide-cc-extensions-01), the header
// extension and feedback negotiated for audio and video. That is
// webrtc.RegisterDefaultInterceptors plus the TWCC header extension
// sender, which browsers run and pion's defaults leave out, minus pion's
// stats interceptor, which only feeds GetStats and sends nothing. The
// interceptors belong to the API (pion builds them per peer connection
// from its registry), so this is an API option rather than a
// ClientConfig field.
func WithFeedback(on bool) APIOption { return func(o *apiOptions) { o.feedback = on } }

func newAPI(tcp bool, ip netip.Addr, noReplay, feedback bool) (*webrtc.API, error) {
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		return nil, err
	}
	if err := webrtc.ConfigureSimulcastExtensionHeaders(me); err != nil {
		return nil, err
	}
	if err := me.RegisterHeaderExtension(webrtc.RTPHeaderExtensionCapability{URI: sdp.AudioLevelURI}, webrtc.RTPCodecTypeAudio); err != nil {
		return nil, err
	}
	ir := &interceptor.Registry{}
	if feedback {
		if err := registerFeedback(me, ir); err != nil {
			return nil, err
		}
	}
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.DisableSRTPReplayProtection(noReplay)
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetIPFilter(func(a net.IP) bool {
		if ip.IsValid() {
			b, ok := netip.AddrFromSlice(a)
			return ok && b.Unmap() == ip
		}
		return a.IsLoopback()
	})
	if tcp {
		se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeTCP4})
	} else {
		se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	}
	return webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithSettingEngine(se),
		webrtc.WithInterceptorRegistry(ir)), nil
}

// registerFeedback registers the browser-like interceptors of
// WithFeedback.
func registerFeedback(me *webrtc.MediaEngine, ir *interceptor.Registry) error {
	if err := webrtc.ConfigureNack(me, ir); err != nil {
		return err
	}
	if err := webrtc.ConfigureRTCPReports(ir); err != nil {
		return err
	}
	if err := webrtc.ConfigureTWCCHeaderExtensionSender(me, ir); err != nil {
		return err
	}
	return webrtc.ConfigureTWCCSender(me, ir)
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
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithCancel(context.Background())
	c := &Client{cfg: cfg, sig: sig, pc: pc, connected: make(chan struct{}), joinStart: time.Now(), cancel: cancel}
	var connOnce sync.Once
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			connOnce.Do(func() {
				c.joinTime.Store(int64(time.Since(c.joinStart)))
				close(c.connected)
			})
		}
	})
	pc.OnTrack(func(t *webrtc.TrackRemote, r *webrtc.RTPReceiver) {
		st := &RecvStats{Kind: t.Kind().String(), clock: t.Codec().ClockRate}
		c.mu.Lock()
		c.tracks = append(c.tracks, st)
		c.mu.Unlock()
		st.read(t)
	})
	dc, err := pc.CreateDataChannel("data", nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	c.dc = dc
	dc.OnMessage(func(m webrtc.DataChannelMessage) {
		c.dataMu.Lock()
		c.data = append(c.data, string(m.Data))
		c.dataMu.Unlock()
	})
	if cfg.Publish {
		if err := c.addTracks(); err != nil {
			c.Close()
			return nil, err
		}
	}
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		c.Close()
		return nil, err
	}
	select {
	case <-gathered:
	case <-ctx.Done():
		c.Close()
		return nil, ctx.Err()
	}
	answer, err := sig.Join(ctx, cfg.Room, cfg.Identity, cfg.Publish, cfg.Subscribe, pc.LocalDescription().SDP)
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
		c.wg.Add(1)
		go func() { defer c.wg.Done(); c.readPublisherRTCP(cctx) }()
	}
	c.wg.Add(1)
	go func() { defer c.wg.Done(); c.sendREMB(cctx) }()
	return c, nil
}

func (c *Client) addTracks() error {
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
					if tr, err = c.pc.AddTransceiverFromTrack(t, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
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
			if _, err := c.pc.AddTransceiverFromTrack(t, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
				return err
			}
		}
	}
	a, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", stream)
	if err != nil {
		return err
	}
	c.audioTrack = a
	_, err = c.pc.AddTransceiverFromTrack(a, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
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
			if err := c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
				continue
			}
			answer, err := c.pc.CreateAnswer(nil)
			if err != nil {
				continue
			}
			if err := c.pc.SetLocalDescription(answer); err != nil {
				continue
			}
			_ = c.sig.Answer(ctx, answer.SDP)
		}
	}
}

// publish sends video at the configured bitrate in 10 ms ticks (a VP8
// frame every 3 ticks, a keyframe every 3 s or when asked) and a 20 ms
// Opus-sized audio packet every other tick.
func (c *Client) publish(ctx context.Context) {
	select {
	case <-c.connected:
	case <-ctx.Done():
		return
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	size := c.cfg.PacketSize
	payload := make([]byte, max(size, vp8KeyHeaderLen))
	audio := make([]byte, 120)
	audio[0] = 0x78
	nl := len(c.videoTracks)
	seqs := make([]uint16, nl)
	// Bytes owed per layer, so each layer keeps its bitrate.
	credit := make([]float64, nl)
	rates := make([]float64, nl)
	for i := range rates {
		rates[i] = float64(c.cfg.VideoBitrate) / 8 / 100 // bytes per 10 ms tick
		if nl == 3 {
			rates[i] /= float64(int(1) << (2 - i)) // q = 1/4, h = 1/2, f = 1
		}
	}
	// Simulcast layers carry the mid and rid header extensions (RFC 8852)
	// so the SFU can tell them apart.
	var midID, ridID uint8
	mid := ""
	if c.cfg.Simulcast {
		for _, tr := range c.pc.GetTransceivers() {
			if tr.Kind() != webrtc.RTPCodecTypeVideo || tr.Sender() == nil {
				continue
			}
			mid = tr.Mid()
			for _, e := range tr.Sender().GetParameters().HeaderExtensions {
				switch e.URI {
				case sdp.SDESMidURI:
					midID = uint8(e.ID)
				case sdp.SDESRTPStreamIDURI:
					ridID = uint8(e.ID)
				}
			}
		}
	}
	var levelID uint8
	if c.cfg.AudioLevel != 0 {
		for _, tr := range c.pc.GetTransceivers() {
			if tr.Kind() == webrtc.RTPCodecTypeAudio && tr.Sender() != nil {
				for _, e := range tr.Sender().GetParameters().HeaderExtensions {
					if e.URI == sdp.AudioLevelURI {
						levelID = uint8(e.ID)
					}
				}
			}
		}
	}
	level := []byte{0x80 | c.cfg.AudioLevel&0x7f}
	var tick uint32
	var aseq uint16
	lastKey := time.Time{}
	keyEvery := c.cfg.KeyframeInterval
	if keyEvery <= 0 {
		keyEvery = 3 * time.Second
	}
	keyPending := make([]bool, nl)
	frameStart := make([]bool, nl)
	for i := range frameStart {
		frameStart[i] = true
	}
	start := time.Now()
	step := func() {
		tick++
		ts := (tick / 3) * 2700 // 90 kHz, 30 frames/s
		if c.keyframe.Swap(false) || time.Since(lastKey) > keyEvery {
			lastKey = time.Now()
			for i := range keyPending {
				keyPending[i] = true
			}
		}
		endFrame := tick%3 == 0
		for i, tr := range c.videoTracks {
			credit[i] += rates[i]
			for credit[i] >= float64(size) || (endFrame && credit[i] > 0) {
				n := size
				if credit[i] < float64(size) {
					n = max(int(credit[i]), 16)
				}
				credit[i] -= float64(n)
				marker := endFrame && credit[i] < float64(size)
				payload[0] = 0x00
				if frameStart[i] {
					payload[0] = 0x10 // S=1, PID=0
				}
				payload[1] = 0x01 // not a keyframe
				if keyPending[i] && frameStart[i] {
					n = max(n, vp8KeyHeaderLen)
					c.vp8KeyHeader(payload, nl-1-i)
					keyPending[i] = false
				}
				payload[2] = byte(i) // the layer, for the subscriber's sake
				frameStart[i] = marker
				seqs[i]++
				pkt := rtp.Packet{Header: rtp.Header{Version: 2, Marker: marker, SequenceNumber: seqs[i], Timestamp: ts}, Payload: payload[:n]}
				if midID != 0 && ridID != 0 {
					_ = pkt.Header.SetExtension(midID, []byte(mid))
					_ = pkt.Header.SetExtension(ridID, []byte(tr.RID()))
				}
				if tr.WriteRTP(&pkt) == nil {
					c.sent.Add(1)
				}
				if marker {
					break
				}
			}
		}
		if tick%2 == 0 && c.audioTrack != nil {
			aseq++
			ap := rtp.Packet{Header: rtp.Header{Version: 2, SequenceNumber: aseq, Timestamp: tick * 480}, Payload: audio}
			if levelID != 0 {
				_ = ap.Header.SetExtension(levelID, level)
			}
			if c.audioTrack.WriteRTP(&ap) == nil {
				c.sent.Add(1)
			}
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// A loaded machine drops ticker ticks: catch up to the wall clock
		// (at most 100 ms at once) so the offered rate holds.
		due := uint32(time.Since(start) / (10 * time.Millisecond))
		for n := 0; tick < due && n < 10; n++ {
			step()
		}
		if tick < due {
			tick = due
		}
	}
}

// readPublisherRTCP reads the SFU's RTCP to the publisher: a PLI or FIR
// makes the next frame a keyframe.
func (c *Client) readPublisherRTCP(ctx context.Context) {
	for _, tr := range c.pc.GetTransceivers() {
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
	<-ctx.Done()
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
		for _, tr := range c.pc.GetTransceivers() {
			if r := tr.Receiver(); r != nil && r.Track() != nil && r.Track().Kind() == webrtc.RTPCodecTypeVideo {
				ssrcs = append(ssrcs, uint32(r.Track().SSRC()))
			}
		}
		if len(ssrcs) == 0 {
			continue
		}
		_ = c.pc.WriteRTCP([]rtcp.Packet{&rtcp.ReceiverEstimatedMaximumBitrate{Bitrate: float32(b), SSRCs: ssrcs}})
	}
}

// SendData sends a text message on the client's data channel.
func (c *Client) SendData(s string) error { return c.dc.SendText(s) }

// Data returns the data-channel messages received so far.
func (c *Client) Data() []string {
	c.dataMu.Lock()
	defer c.dataMu.Unlock()
	return append([]string(nil), c.data...)
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

// PC returns the peer connection.
func (c *Client) PC() *webrtc.PeerConnection { return c.pc }

// Close leaves and closes the peer connection. It is idempotent.
func (c *Client) Close() error {
	var err error
	c.once.Do(func() {
		c.cancel()
		err = errors.Join(c.sig.Close(), c.pc.Close())
		c.wg.Wait()
	})
	return err
}

// RecvStats are one received track's counters. Read them with the
// methods; they are updated concurrently.
type RecvStats struct {
	Kind  string
	clock uint32

	packets atomic.Uint64
	bytes   atomic.Uint64
	lost    atomic.Uint64
	late    atomic.Uint64 // packets older than the newest seen (retransmissions, reordering)
	repair  atomic.Uint64 // late packets that filled a gap counted in lost
	lastSeq atomic.Uint32
	layer   atomic.Int32  // the simulcast layer of the last video packet
	jitter  atomic.Uint64 // RFC 3550 interarrival jitter, in microseconds
}

// recvWindow is how many sequence numbers back a late packet (a NACKed
// retransmission, a reordered packet) still takes its gap out of lost.
const recvWindow = 1024

func (s *RecvStats) read(t *webrtc.TrackRemote) {
	buf := make([]byte, 1600)
	var h rtp.Header
	started := false
	var transit float64
	var j float64
	var seqs seqState
	for {
		n, _, err := t.Read(buf)
		if err != nil {
			return
		}
		hn, err := h.Unmarshal(buf[:n])
		if err != nil {
			continue
		}
		now := time.Now()
		s.packets.Add(1)
		s.bytes.Add(uint64(n))
		if s.Kind == "video" && n-hn > 2 {
			s.layer.Store(int32(buf[hn+2]))
		}
		inOrder := seqs.add(s, h.SequenceNumber)
		// Jitter is over in-order packets only, as libwebrtc's: a NACKed
		// retransmission carries its old timestamp and would count a
		// round trip as jitter.
		if s.clock > 0 && inOrder {
			arrival := float64(now.UnixNano()) / 1e9 * float64(s.clock)
			tr := arrival - float64(h.Timestamp)
			if started {
				d := tr - transit
				if d < 0 {
					d = -d
				}
				j += (d - j) / 16
				s.jitter.Store(uint64(j / float64(s.clock) * 1e6))
			}
			transit = tr
		}
		started = true
	}
}

// seqState is a received track's sequence-number accounting: gaps count
// in lost until a late packet fills them.
type seqState struct {
	last    uint16
	started bool
	// missing has a bit set for each sequence number of the last
	// recvWindow that was skipped (counted in lost) and has not arrived.
	missing [recvWindow / 64]uint64
}

func (q *seqState) set(seq uint16, on bool) {
	i, b := seq%recvWindow/64, uint64(1)<<(seq%64)
	if on {
		q.missing[i] |= b
	} else {
		q.missing[i] &^= b
	}
}

// add accounts for seq in s's counters and reports whether it is the
// newest so far (not a late packet).
func (q *seqState) add(s *RecvStats, seq uint16) bool {
	switch d := seq - q.last; {
	case !q.started:
	case int16(d) <= 0:
		s.late.Add(1)
		// A retransmission or a reordered packet fills its gap: it was
		// not lost after all (a duplicate was never missing).
		if q.last-seq < recvWindow-1 && q.missing[seq%recvWindow/64]&(1<<(seq%64)) != 0 {
			q.set(seq, false)
			s.lost.Add(^uint64(0))
			s.repair.Add(1)
		}
		return false
	case d < 1000:
		s.lost.Add(uint64(d - 1))
		for x := q.last + 1; x != seq; x++ {
			q.set(x, true)
		}
	default:
		// A jump (a new source, a restart): not loss.
		q.missing = [recvWindow / 64]uint64{}
	}
	q.set(seq, false)
	q.last, q.started = seq, true
	s.lastSeq.Store(uint32(seq))
	return true
}

// Packets, Bytes and Lost count what arrived and the sequence gaps.
func (s *RecvStats) Packets() uint64 { return s.packets.Load() }
func (s *RecvStats) Bytes() uint64   { return s.bytes.Load() }
func (s *RecvStats) Lost() uint64    { return s.lost.Load() }

// Late counts packets older than the newest already received
// (retransmissions and reordering); LastSeq is the newest sequence number.
func (s *RecvStats) Late() uint64    { return s.late.Load() }
func (s *RecvStats) LastSeq() uint16 { return uint16(s.lastSeq.Load()) }

// Repaired counts late packets that filled a gap (NACKed retransmissions,
// reordering): Lost no longer counts them.
func (s *RecvStats) Repaired() uint64 { return s.repair.Load() }

// Layer is the simulcast layer (0 low, 2 high) of the last video packet.
func (s *RecvStats) Layer() int { return int(s.layer.Load()) }

// Jitter is the interarrival jitter.
func (s *RecvStats) Jitter() time.Duration { return time.Duration(s.jitter.Load()) * time.Microsecond }

// NewSessionID returns a random session id valid on the bus.
func NewSessionID() string {
	var b [9]byte
	_, _ = rand.Read(b[:])
	return "s" + hex.EncodeToString(b[:])
}

// dialOffered makes a receive-only client for a server that offers first
// (a Janus subscriber): it answers offer through sig.Answer.
func dialOffered(ctx context.Context, api *webrtc.API, sig Signaler, offer string) (*Client, error) {
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		sig.Close()
		return nil, err
	}
	cctx, cancel := context.WithCancel(context.Background())
	c := &Client{cfg: ClientConfig{Subscribe: true}, sig: sig, pc: pc, connected: make(chan struct{}), joinStart: time.Now(), cancel: cancel}
	var connOnce sync.Once
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			connOnce.Do(func() {
				c.joinTime.Store(int64(time.Since(c.joinStart)))
				close(c.connected)
			})
		}
	})
	pc.OnTrack(func(t *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		st := &RecvStats{Kind: t.Kind().String(), clock: t.Codec().ClockRate}
		c.mu.Lock()
		c.tracks = append(c.tracks, st)
		c.mu.Unlock()
		st.read(t)
	})
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		c.Close()
		return nil, err
	}
	answer, err := pc.CreateAnswer(nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(answer); err != nil {
		c.Close()
		return nil, err
	}
	select {
	case <-gathered:
	case <-ctx.Done():
		c.Close()
		return nil, ctx.Err()
	}
	if err := sig.Answer(ctx, pc.LocalDescription().SDP); err != nil {
		c.Close()
		return nil, err
	}
	_ = cctx
	return c, nil
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
