// Package relayclient publishes RTP into a traverse room, and receives
// the room's tracks, through an SFU node's relay port, speaking the cascade relay protocol as a client
// (docs/relay-protocol.md, "Clients") instead of WebRTC: no ICE, DTLS or
// SRTP, one UDP socket, one AEAD. It is meant for servers and tools that
// feed media into rooms (recorders' inverse: ingest, load generators,
// gateways) and sit next to the nodes.
//
// It lives under client/ beside client/nat and client/p2p because it is
// what a program outside this repository imports; the wire codec it uses
// stays internal (internal/cascade/relaywire), shared with the node.
package relayclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
)

// Track is a track the client publishes.
type Track struct {
	// ID names the track in the room (1..64 bytes).
	ID string
	// Video or audio.
	Video bool
	// MimeType is the codec ("video/VP8", "audio/opus"); ClockRate its RTP
	// clock; Channels (audio) and Fmtp as in SDP.
	MimeType  string
	ClockRate uint32
	Channels  uint8
	Fmtp      string
	// Layers is the number of simulcast layers (0 or 1: none, up to 3).
	Layers uint8
}

// Config configures a Client.
type Config struct {
	// Server is the node's relay port.
	Server netip.AddrPort
	// Token is the access token (signal's, for the room); Secret the link
	// secret its issuer gave with it (relaywire.ClientSecret).
	Token  string
	Secret []byte
	// Room is the token's room.
	Room string
	// Tracks are what the client publishes (at most 4).
	Tracks []Track
	// Local is the address to send from (default: any, port 0).
	Local netip.AddrPort
	// Keepalive is how often the hello is repeated so a quiet client
	// stays bound (default 10 s; the node forgets a client quiet 30 s).
	Keepalive time.Duration
	// OnFeedback receives the node's RTCP for a track (keyframe requests).
	OnFeedback func(track, layer uint8, rtcp []byte)

	// Subscribe asks to receive the room's tracks (the token must grant
	// subscribing): the node announces each track (OnTrack) and sends its
	// RTP (OnRTP). The callbacks run on the client's read goroutine, one
	// at a time; rtp is valid only during the call.
	Subscribe   bool
	OnTrack     func(t RecvTrack)
	OnTrackGone func(index uint8)
	OnRTP       func(track, layer uint8, rtp []byte)
}

// RecvTrack is a track of the room the client receives.
type RecvTrack struct {
	// Index names the track in OnRTP and RequestKeyframe.
	Index uint8
	// Publisher is who publishes it (a participant's session, or a relay
	// client's identity); the rest is as in Track.
	Publisher string
	Track
}

// A layer choice (SetLayer) besides a layer 0..2.
const (
	// LayerAll: every layer of the track, each as its publisher sends it
	// (OnRTP's layer says which); what the client gets until it chooses.
	LayerAll = relaywire.LayerAll
	// LayerNone: nothing of the track (paused).
	LayerNone = relaywire.LayerNone
)

// recvBuffer is a receiving client's socket receive buffer.
const recvBuffer = 4 << 20

// ErrRefused is returned when the node does not welcome the client before
// the context ends: a bad token or secret, a room or right it does not
// grant, or a node at its client limit. The node says nothing to refused
// clients (their reason is in its counters).
var ErrRefused = errors.New("relayclient: not welcomed by the node")

// Client is a relay client bound to one node.
type Client struct {
	cfg   Config
	conn  *net.UDPConn
	link  *relaywire.ClientLink
	hello []byte // the sealed hello body

	mu   sync.Mutex // guards buf and body
	buf  []byte
	body []byte

	recvMu sync.Mutex // guards recv, byKey, layers, moved
	recv   map[uint8]RecvTrack
	// byKey is each received track's index by its trackKey.
	byKey map[string]uint8
	// layers are the client's layer choices (SetLayer) by track index,
	// with when each was last sent.
	layers map[uint8]layerChoice
	// moved are choices whose track the node announced under another
	// index (it gave the client new indices: it forgot the client after a
	// quiet spell, or restarted), by trackKey: a choice follows its track
	// to its new index and is said again there.
	moved map[string]layerChoice
	// unknownAt is when media of an unannounced track last made the
	// client say hello again (at most once a second): the node answers a
	// hello with every track.
	unknownAt time.Time

	welcomed chan uint64
	done     chan struct{}
	wg       sync.WaitGroup
}

// Dial says hello to the node and waits for its welcome (repeating the
// hello every 250 ms) until ctx ends.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Keepalive <= 0 {
		cfg.Keepalive = 10 * time.Second
	}
	link, err := relaywire.NewClientLink(cfg.Secret, false, 0)
	if err != nil {
		return nil, fmt.Errorf("relayclient: %w", err)
	}
	h := relaywire.Hello{Room: cfg.Room, Publish: len(cfg.Tracks) > 0, Subscribe: cfg.Subscribe}
	for _, t := range cfg.Tracks {
		ct := relaywire.ClientTrack{ID: t.ID, Kind: relaywire.KindAudio, Layers: max(t.Layers, 1), Channels: t.Channels,
			ClockRate: t.ClockRate, Mime: t.MimeType, Fmtp: t.Fmtp}
		if t.Video {
			ct.Kind = relaywire.KindVideo
		}
		h.Tracks = append(h.Tracks, ct)
	}
	body, err := relaywire.AppendHello(nil, &h)
	if err != nil {
		return nil, fmt.Errorf("relayclient: hello: %w", err)
	}
	if len(cfg.Token) == 0 || len(cfg.Token) > relaywire.MaxToken {
		return nil, fmt.Errorf("relayclient: token: %w", relaywire.ErrTooLong)
	}
	local := cfg.Local
	if !local.IsValid() {
		local = netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
		if cfg.Server.Addr().Is6() {
			local = netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
		}
	}
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(local))
	if err != nil {
		return nil, err
	}
	if cfg.Subscribe {
		// a receiving client takes a room's bursts (keyframes); best
		// effort, the system's maximum caps it
		_ = conn.SetReadBuffer(recvBuffer)
	}
	c := &Client{cfg: cfg, conn: conn, link: link, hello: body, buf: make([]byte, 0, 2048), body: make([]byte, 0, 2048),
		recv: map[uint8]RecvTrack{}, byKey: map[string]uint8{}, layers: map[uint8]layerChoice{}, moved: map[string]layerChoice{}, welcomed: make(chan uint64, 1), done: make(chan struct{})}
	c.wg.Add(1)
	go c.read()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		if err := c.sayHello(); err != nil {
			c.Close()
			return nil, err
		}
		select {
		case <-c.welcomed:
			c.wg.Add(1)
			go c.keepalive()
			return c, nil
		case <-ctx.Done():
			c.Close()
			return nil, fmt.Errorf("%w: %w", ErrRefused, ctx.Err())
		case <-t.C:
		}
	}
}

func (c *Client) sayHello() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, err := c.link.SealHello(c.buf[:0], c.cfg.Token, c.hello)
	if err != nil {
		return err
	}
	c.buf = f[:0]
	_, err = c.conn.WriteToUDPAddrPort(f, c.cfg.Server)
	return err
}

// WriteRTP publishes an RTP packet of track (its index in Config.Tracks)
// and simulcast layer.
func (c *Client) WriteRTP(track, layer uint8, rtp []byte) error {
	if int(track) >= len(c.cfg.Tracks) {
		return fmt.Errorf("relayclient: track %d of %d", track, len(c.cfg.Tracks))
	}
	return c.send(relaywire.ClientMsg{Kind: relaywire.KindMedia, Track: track, Layer: layer}, rtp)
}

// send seals one client message and sends it to the node.
func (c *Client) send(m relaywire.ClientMsg, payload []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.body = relaywire.AppendClientMsg(c.body[:0], m, payload)
	f := c.link.Seal(c.buf[:0], relaywire.TypeClient, c.body)
	c.buf = f[:0]
	_, err := c.conn.WriteToUDPAddrPort(f, c.cfg.Server)
	return err
}

// LocalAddr is the address the client sends from.
func (c *Client) LocalAddr() netip.AddrPort { return c.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (c *Client) keepalive() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.Keepalive)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
			_ = c.sayHello()
			c.repeatLayers()
		}
	}
}

func (c *Client) read() {
	defer c.wg.Done()
	b := make([]byte, 2048)
	for {
		n, from, err := c.conn.ReadFromUDPAddrPort(b)
		if err != nil {
			return
		}
		// a socket bound to the unspecified address may see 4in6 sources
		if netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) != c.cfg.Server {
			continue
		}
		h, body, err := c.link.Open(b[:n])
		if err != nil {
			continue
		}
		switch h.Type {
		case relaywire.TypeWelcome:
			if _, hc, err := relaywire.ParseWelcome(body); err == nil {
				select {
				case c.welcomed <- hc:
				default:
				}
			}
		case relaywire.TypeClient:
			m, p, err := relaywire.ParseClientMsg(body)
			if err != nil {
				continue
			}
			switch m.Kind {
			case relaywire.KindFeedback:
				if c.cfg.OnFeedback != nil {
					c.cfg.OnFeedback(m.Track, m.Layer, p)
				}
			case relaywire.KindMedia:
				c.media(m, p)
			case relaywire.KindTrack:
				if st, err := relaywire.ParseSubTrack(p); err == nil {
					c.track(m.Track, &st)
				}
			case relaywire.KindTrackGone:
				c.recvMu.Lock()
				old, ok := c.recv[m.Track]
				if ok {
					delete(c.byKey, trackKey(&old))
				}
				delete(c.recv, m.Track)
				delete(c.layers, m.Track)
				c.recvMu.Unlock()
				if ok && c.cfg.OnTrackGone != nil {
					c.cfg.OnTrackGone(m.Track)
				}
			}
		}
	}
}

// trackKey names a received track whatever its index: its publisher and
// id (the node gives a track one index per client).
func trackKey(rt *RecvTrack) string { return rt.Publisher + "\x00" + rt.ID }

// track records an announced track; OnTrack hears of it when it is new or
// changed (the node repeats every track at each hello). A track announced
// under a new index (the node gave the client new indices) takes its
// layer choice along, said again under the new index at once, and
// OnTrackGone hears of the old index; a choice made under an index that
// another track now has is undone there (LayerAll), since the client may
// have repeated it to the node before it heard of the change.
func (c *Client) track(idx uint8, st *relaywire.SubTrack) {
	rt := RecvTrack{Index: idx, Publisher: st.Publisher, Track: Track{ID: st.ID, Video: st.Kind == relaywire.KindVideo,
		MimeType: st.Mime, ClockRate: st.ClockRate, Channels: st.Channels, Fmtp: st.Fmtp, Layers: st.Layers}}
	key := trackKey(&rt)
	gone := -1
	reset := false
	var say *layerChoice
	c.recvMu.Lock()
	old, ok := c.recv[idx]
	if ok && trackKey(&old) != key {
		// another track under the index
		delete(c.byKey, trackKey(&old))
		if ch, chosen := c.layers[idx]; chosen {
			c.keepMoved(trackKey(&old), ch)
			delete(c.layers, idx)
			reset = true
		}
	}
	if j, had := c.byKey[key]; had && j != idx {
		// the track under a new index
		delete(c.recv, j)
		if ch, chosen := c.layers[j]; chosen {
			c.keepMoved(key, ch)
			delete(c.layers, j)
		}
		gone = int(j)
	}
	c.recv[idx] = rt
	c.byKey[key] = idx
	if ch, chosen := c.layers[idx]; chosen && !ch.fits(rt.Layers) {
		delete(c.layers, idx) // the track has fewer layers now
	}
	if ch, m := c.moved[key]; m {
		delete(c.moved, key)
		if ch.fits(rt.Layers) {
			now := time.Now()
			ch.at, ch.sent, ch.got = now, now, false
			c.layers[idx] = ch
			say = &ch
		}
	}
	c.recvMu.Unlock()
	switch {
	case say != nil:
		_ = c.send(relaywire.ClientMsg{Kind: relaywire.KindLayer, Track: idx, Layer: say.layer}, nil)
	case reset:
		_ = c.send(relaywire.ClientMsg{Kind: relaywire.KindLayer, Track: idx, Layer: LayerAll}, nil)
	}
	if gone >= 0 && c.cfg.OnTrackGone != nil {
		c.cfg.OnTrackGone(uint8(gone))
	}
	if (!ok || old != rt) && c.cfg.OnTrack != nil {
		c.cfg.OnTrack(rt)
	}
}

// keepMoved keeps the choice of a track whose index changed until the
// track is announced again, at most relaywire.MaxSubTracks of them (the
// tracks a client receives at once). c.recvMu is held.
func (c *Client) keepMoved(key string, ch layerChoice) {
	if len(c.moved) >= relaywire.MaxSubTracks {
		for k := range c.moved {
			delete(c.moved, k)
			break
		}
	}
	c.moved[key] = ch
}

// media hands a received packet to OnRTP; one of a track not announced
// yet (its announcement was lost) makes the client say hello again.
func (c *Client) media(m relaywire.ClientMsg, rtp []byte) {
	c.recvMu.Lock()
	_, ok := c.recv[m.Track]
	again, choose := false, false
	var now time.Time
	if !ok {
		if now = time.Now(); now.Sub(c.unknownAt) >= time.Second {
			c.unknownAt, again = now, true
		}
	}
	ch, chosen := c.layers[m.Track]
	if ok && chosen {
		if now.IsZero() {
			now = time.Now()
		}
		if !ch.matches(m.Layer, now) && now.Sub(ch.sent) >= time.Second {
			// media the choice does not match: the choice was lost, or
			// the node waits for the new layer's keyframe; said again
			// at most once a second
			ch.sent, choose = now, true
		}
		c.layers[m.Track] = ch
	}
	c.recvMu.Unlock()
	if again {
		_ = c.sayHello()
	}
	if choose {
		_ = c.send(relaywire.ClientMsg{Kind: relaywire.KindLayer, Track: m.Track, Layer: ch.layer}, nil)
	}
	if ok && c.cfg.OnRTP != nil {
		c.cfg.OnRTP(m.Track, m.Layer, rtp)
	}
}

// Received returns the tracks the client receives now.
func (c *Client) Received() []RecvTrack {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	out := make([]RecvTrack, 0, len(c.recv))
	for _, t := range c.recv {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b RecvTrack) int { return int(a.Index) - int(b.Index) })
	return out
}

// RequestKeyframe asks the publisher of a received track (its index) for
// a keyframe of a layer: a PLI, carried to the publisher by the node (and
// across the cascade when the track comes from another node).
func (c *Client) RequestKeyframe(track, layer uint8) error {
	if !c.cfg.Subscribe {
		return errors.New("relayclient: not subscribed")
	}
	// RTCP PLI (RFC 4585 6.3.1): V=2 FMT=1, PT 206, length 2, SSRCs 0
	// (the node knows the track by its index)
	pli := [12]byte{0x81, 206, 0, 2}
	return c.send(relaywire.ClientMsg{Kind: relaywire.KindFeedback, Track: track, Layer: layer}, pli[:])
}

// layerChoice is a layer choice and when it was last sent.
type layerChoice struct {
	layer uint8
	sent  time.Time
	at    time.Time // when it was made (or followed its track to a new index)
	got   bool      // a packet of the chosen layer came since
	last  uint8     // the layer of the track's last packet
}

// choiceSettle is how long after a one-layer choice media of a lower layer
// still says the choice may not have reached the node (it is said again),
// unless a packet of the chosen layer came; after it, media of one lower
// layer is the node's fallback while the chosen layer is not live.
const choiceSettle = 5 * time.Second

// fits reports whether the choice is one a track of layers layers has.
func (ch *layerChoice) fits(layers uint8) bool {
	return ch.layer >= LayerNone || ch.layer < max(layers, 1)
}

// matches records a packet of layer l of the track and reports whether
// it agrees with the choice: every layer under LayerAll, none under
// LayerNone; under one layer, that layer, or one layer below it at a time
// (the node's fallback: docs/relay-protocol.md, "Layers") once the choice
// settled. Packets of several layers in turn (the node sends every layer:
// the choice was lost) or above the choice do not.
func (ch *layerChoice) matches(l uint8, now time.Time) bool {
	prev := ch.last
	ch.last = l
	switch {
	case ch.layer == LayerAll:
		return true
	case ch.layer == LayerNone:
		return false
	case l == ch.layer:
		ch.got = true
		return true
	case l > ch.layer:
		return false
	case !ch.got && now.Sub(ch.at) < choiceSettle:
		return false
	}
	return l == prev || prev == ch.layer
}

// SetLayer chooses which layer of a received track (its index) the node
// sends the client: 0..2 (the layers the track's announcement counts,
// RecvTrack.Layers), LayerAll or LayerNone. With one layer the client
// gets one RTP stream: one SSRC, sequence numbers and timestamps that
// continue across layer switches, each switch made at a keyframe of the
// new layer (the node asks the publisher for one); OnRTP's layer says
// which layer a packet comes from. The choice is said again with every
// keepalive, and at once (at most once a second) when media does not
// match it; it follows the track when the node announces it under another
// index, and is forgotten when the track leaves. While the chosen layer
// is not live (its publisher stopped sending it) the node sends the best
// live layer below it, and the chosen one again when it is back.
func (c *Client) SetLayer(track, layer uint8) error {
	if !c.cfg.Subscribe {
		return errors.New("relayclient: not subscribed")
	}
	c.recvMu.Lock()
	rt, ok := c.recv[track]
	if ok && (layer < LayerNone && layer >= max(rt.Layers, 1)) {
		c.recvMu.Unlock()
		return fmt.Errorf("relayclient: track %d has %d layers", track, max(rt.Layers, 1))
	}
	if ok {
		now := time.Now()
		c.layers[track] = layerChoice{layer: layer, sent: now, at: now}
	}
	c.recvMu.Unlock()
	if !ok {
		return fmt.Errorf("relayclient: no track %d", track)
	}
	return c.send(relaywire.ClientMsg{Kind: relaywire.KindLayer, Track: track, Layer: layer}, nil)
}

// repeatLayers says every layer choice again (the keepalive's): a lost
// choice of LayerAll shows in no media.
func (c *Client) repeatLayers() {
	c.recvMu.Lock()
	now := time.Now()
	var out []layerChoice
	var idx []uint8
	for i, ch := range c.layers {
		ch.sent = now
		c.layers[i] = ch
		out, idx = append(out, ch), append(idx, i)
	}
	c.recvMu.Unlock()
	for k, ch := range out {
		_ = c.send(relaywire.ClientMsg{Kind: relaywire.KindLayer, Track: idx[k], Layer: ch.layer}, nil)
	}
}

// Close stops the client. The node unbinds it once it has been quiet for
// its idle time.
func (c *Client) Close() {
	select {
	case <-c.done:
		return
	default:
	}
	close(c.done)
	_ = c.conn.Close()
	c.wg.Wait()
}
