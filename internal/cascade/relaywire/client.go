package relaywire

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"
)

// Relay clients (docs/relay-protocol.md, "Clients"): a program that is not
// a node speaks the relay protocol on a node's relay port with a token the
// signal role's key signed. Its frames are their own types; a client never
// sends node frames (types 1-5), and a node never accepts one from it.

// Client frame types.
const (
	// TypeHello (client -> node): the token in clear, then the sealed
	// hello body (room, rights asked for, the tracks the client publishes).
	TypeHello Type = 6
	// TypeClient (both ways): one client message (media up, feedback down).
	TypeClient Type = 7
	// TypeWelcome (node -> client): the node's answer to a hello.
	TypeWelcome Type = 8
)

// Limits of client frames.
const (
	// MaxToken is the longest token a hello carries (signal's tokens are
	// ~250 bytes).
	MaxToken = 1024
	// MaxClientTracks is the most tracks one client publishes.
	MaxClientTracks = 4
	// MaxMime and MaxFmtp bound a track's codec name and fmtp line.
	MaxMime = 64
	MaxFmtp = 255
	// ClientSecretLen is the size of a client's link secret.
	ClientSecretLen = 32
	// ClientMsgLen is the client message's header before its payload.
	ClientMsgLen = 4
	helloFixed   = LinkHeaderLen + 2
)

// clientSecretLabel and the HKDF labels separate the client keys from
// every other use of the token key and of the client secret. The client
// secret is version 1's (token issuers compute it); the link salt is
// version 2's, so that its AES-128 keys are not halves of version 1's
// AES-256 keys.
const (
	clientSecretLabel = "traverse relay client v1\x00"
	clientSalt        = "traverse relay client link v2"
)

// ClientSecret is a client's link secret: HMAC-SHA256 over the label and
// the token, keyed with the signal role's token key. The issuer of the
// token hands it to the client with the token; a node that knows the
// token key recomputes it from the token in the hello. It never travels
// on the relay port, so a token seen on the wire (or a browser's join
// token) does not let anyone else speak for the client.
func ClientSecret(tokenKey []byte, token string) []byte {
	m := hmac.New(sha256.New, tokenKey)
	m.Write([]byte(clientSecretLabel))
	m.Write([]byte(token))
	return m.Sum(nil)
}

func clientAEAD(secret []byte, dir string) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, secret, []byte(clientSalt), dir, KeyLen)
	if err != nil {
		return nil, err
	}
	return newGCM(k)
}

// ClientLink seals and opens one client's frames: AES-128-GCM under two
// keys from the client secret by HKDF-SHA256 (info "up" for client ->
// node, "down" for node -> client), a send counter from the wall clock, a
// replay window for the other direction. Seal is safe for concurrent use.
type ClientLink struct {
	sender     NodeID // written in the link header: 0 for the client, the node's id for the node
	seal, open cipher.AEAD
	counter    atomic.Uint64
	mu         sync.Mutex // guards window
	window     Window
}

// NewClientLink returns the client's end of the link (node false) or the
// node's (node true, sender its node id).
func NewClientLink(secret []byte, node bool, sender NodeID) (*ClientLink, error) {
	if len(secret) != ClientSecretLen {
		return nil, ErrSecret
	}
	up, err := clientAEAD(secret, "up")
	if err != nil {
		return nil, err
	}
	down, err := clientAEAD(secret, "down")
	if err != nil {
		return nil, err
	}
	l := &ClientLink{seal: up, open: down}
	if node {
		l.seal, l.open, l.sender = down, up, sender
	}
	l.counter.Store(uint64(time.Now().UnixNano()))
	return l, nil
}

// SealHello appends a hello frame: link header, token length and token in
// clear (authenticated), then body sealed.
func (l *ClientLink) SealHello(dst []byte, token string, body []byte) ([]byte, error) {
	if len(token) == 0 || len(token) > MaxToken {
		return dst, ErrTooLong
	}
	start := len(dst)
	dst = AppendLinkHeader(dst, LinkHeader{Type: TypeHello, Sender: l.sender, Counter: l.counter.Add(1)})
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(token)))
	dst = append(dst, token...)
	return l.seal.Seal(dst, dst[start+4:start+LinkHeaderLen], body, dst[start:]), nil
}

// Seal appends a frame of type t (TypeClient or TypeWelcome) carrying body.
func (l *ClientLink) Seal(dst []byte, t Type, body []byte) []byte {
	start := len(dst)
	dst = AppendLinkHeader(dst, LinkHeader{Type: t, Sender: l.sender, Counter: l.counter.Add(1)})
	return l.seal.Seal(dst, dst[start+4:start+LinkHeaderLen], body, dst[start:])
}

// HelloToken returns the token of a hello frame without checking it.
func HelloToken(frame []byte) ([]byte, error) {
	h, err := ParseLinkHeader(frame)
	if err != nil {
		return nil, err
	}
	if h.Type != TypeHello {
		return nil, ErrType
	}
	if len(frame) < helloFixed {
		return nil, ErrShort
	}
	n := int(binary.BigEndian.Uint16(frame[LinkHeaderLen:]))
	if n == 0 || n > MaxToken {
		return nil, ErrField
	}
	if len(frame) < helloFixed+n+TagLen {
		return nil, ErrShort
	}
	return frame[helloFixed : helloFixed+n], nil
}

// Open authenticates and decrypts a frame of the other end in place and
// returns its header and body: a replayed counter is refused before the
// decryption, and recorded only once the tag verifies.
func (l *ClientLink) Open(frame []byte) (LinkHeader, []byte, error) {
	h, err := ParseLinkHeader(frame)
	if err != nil {
		return h, nil, err
	}
	aad := LinkHeaderLen
	switch h.Type {
	case TypeHello:
		tok, err := HelloToken(frame)
		if err != nil {
			return h, nil, err
		}
		aad = helloFixed + len(tok)
	case TypeClient, TypeWelcome:
	default:
		return h, nil, ErrType
	}
	if len(frame) < aad+TagLen {
		return h, nil, ErrShort
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.window.Check(h.Counter) {
		return h, nil, ErrReplay
	}
	ct := frame[aad:]
	body, err := l.open.Open(ct[:0], frame[4:LinkHeaderLen], ct, frame[:aad])
	if err != nil {
		return h, nil, ErrAuth
	}
	l.window.Accept(h.Counter)
	return h, body, nil
}

// Track kinds in a hello.
const (
	KindAudio uint8 = 1
	KindVideo uint8 = 2
)

// ClientTrack is one track a client publishes.
type ClientTrack struct {
	ID        string
	Kind      uint8 // KindAudio or KindVideo
	Layers    uint8 // simulcast layers, 1..3
	Channels  uint8
	ClockRate uint32
	Mime      string // "video/VP8"
	Fmtp      string
}

// Hello is a hello's sealed body:
//
//	room (one length byte, 1..MaxName, and its bytes)
//	flags: bit 0 publish, bit 1 subscribe
//	n tracks (0..MaxClientTracks), each: id (length byte 1..MaxName,
//	bytes), kind, layers, channels, clock rate (4), mime (length byte
//	1..MaxMime, bytes), fmtp (length byte 0..MaxFmtp, bytes)
type Hello struct {
	Room      string
	Publish   bool
	Subscribe bool
	Tracks    []ClientTrack
}

// AppendHello appends h's encoding to b.
func AppendHello(b []byte, h *Hello) ([]byte, error) {
	if len(h.Room) == 0 || len(h.Room) > MaxName || len(h.Tracks) > MaxClientTracks {
		return b, ErrTooLong
	}
	b = append(b, byte(len(h.Room)))
	b = append(b, h.Room...)
	var f byte
	if h.Publish {
		f |= 1
	}
	if h.Subscribe {
		f |= 2
	}
	b = append(b, f, byte(len(h.Tracks)))
	for i := range h.Tracks {
		var err error
		if b, err = appendTrack(b, &h.Tracks[i]); err != nil {
			return b, err
		}
	}
	return b, nil
}

// ParseHello reads a hello body. Every value is checked against its
// range; trailing bytes are refused.
func ParseHello(b []byte) (Hello, error) {
	var h Hello
	r := reader{b: b}
	h.Room = string(r.name(1, MaxName))
	f := r.byte()
	n := int(r.byte())
	if r.err == nil && (f&^3 != 0 || n > MaxClientTracks) {
		return Hello{}, ErrField
	}
	h.Publish, h.Subscribe = f&1 != 0, f&2 != 0
	for i := 0; i < n && r.err == nil; i++ {
		t, err := r.track()
		if err != nil {
			return Hello{}, err
		}
		h.Tracks = append(h.Tracks, t)
	}
	if r.err != nil {
		return Hello{}, r.err
	}
	if len(r.b) != 0 {
		return Hello{}, ErrField
	}
	return h, nil
}

// appendTrack appends a track's encoding (a hello's, a track message's).
func appendTrack(b []byte, t *ClientTrack) ([]byte, error) {
	if len(t.ID) == 0 || len(t.ID) > MaxName || len(t.Mime) == 0 || len(t.Mime) > MaxMime || len(t.Fmtp) > MaxFmtp {
		return b, ErrTooLong
	}
	if t.Kind != KindAudio && t.Kind != KindVideo || t.Layers < 1 || t.Layers > 3 || t.ClockRate == 0 {
		return b, ErrField
	}
	b = append(b, byte(len(t.ID)))
	b = append(b, t.ID...)
	b = append(b, t.Kind, t.Layers, t.Channels)
	b = binary.BigEndian.AppendUint32(b, t.ClockRate)
	b = append(b, byte(len(t.Mime)))
	b = append(b, t.Mime...)
	b = append(b, byte(len(t.Fmtp)))
	return append(b, t.Fmtp...), nil
}

// track reads a track's encoding; a value out of range is ErrField, a
// short body the reader's error.
func (r *reader) track() (ClientTrack, error) {
	var t ClientTrack
	t.ID = string(r.name(1, MaxName))
	t.Kind, t.Layers, t.Channels = r.byte(), r.byte(), r.byte()
	t.ClockRate = r.u32()
	t.Mime = string(r.name(1, MaxMime))
	t.Fmtp = string(r.name(0, MaxFmtp))
	if r.err == nil && (t.Kind != KindAudio && t.Kind != KindVideo || t.Layers < 1 || t.Layers > 3 || t.ClockRate == 0) {
		return t, ErrField
	}
	return t, r.err
}

// reader reads fields off b, recording the first error.
type reader struct {
	b   []byte
	err error
}

// take returns the next n bytes, or nil with ErrShort (the first error
// sticks: later reads return nothing).
func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = ErrShort
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) byte() byte {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) u32() uint32 {
	if v := r.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (r *reader) name(lo, hi int) []byte {
	n := int(r.byte())
	if r.err == nil && (n < lo || n > hi) {
		r.err = ErrField
	}
	return r.take(n)
}

// Client message kinds besides KindMedia and KindFeedback (a subscribing
// client's, node -> client).
const (
	// KindTrack: a track of the room the client receives from now on,
	// under the message's track index (payload: a SubTrack).
	KindTrack Kind = 3
	// KindTrackGone: the track of that index left the room (no payload).
	KindTrackGone Kind = 4
	// KindLayer (client -> node): which layer of a received track the
	// client wants (the message's layer byte: 0..2, LayerAll or
	// LayerNone; no payload).
	KindLayer     Kind = 5
	maxClientKind      = KindLayer
	// MaxSubTracks is the most tracks one subscribing client receives at
	// once: indices 0..MaxSubTracks-1.
	MaxSubTracks = 255
)

// A layer choice's layer byte besides a layer (0..2): every layer, each
// as its publisher sends it (a client's choice until it makes one), or
// none (the track is paused).
const (
	LayerAll  uint8 = 0xFF
	LayerNone uint8 = 0xFE
)

// AppendLayerMsg appends a layer choice for a received track to b: the
// client message header alone.
func AppendLayerMsg(b []byte, track, layer uint8) []byte {
	return AppendClientMsg(b, ClientMsg{Kind: KindLayer, Track: track, Layer: layer}, nil)
}

// ParseLayerMsg reads a layer choice (a client message of KindLayer): a
// layer 0..2, LayerAll or LayerNone, and no payload.
func ParseLayerMsg(b []byte) (track, layer uint8, err error) {
	m, p, err := ParseClientMsg(b)
	if err != nil {
		return 0, 0, err
	}
	if m.Kind != KindLayer || len(p) != 0 || m.Layer > 2 && m.Layer != LayerAll && m.Layer != LayerNone {
		return 0, 0, ErrField
	}
	return m.Track, m.Layer, nil
}

// ClientMsg is a client message's header:
//
//	0  kind: KindMedia (RTP: a client's track, client -> node, or a track
//	   it receives, node -> client), KindFeedback (RTCP: for a client's
//	   track, node -> client, or for a track it receives, client -> node),
//	   KindTrack, KindTrackGone (node -> client), KindLayer (client -> node)
//	1  track: its index in the hello's tracks (a client's track) or among
//	   the tracks it receives (given by KindTrack)
//	2  layer
//	3  reserved, 0
//	4.. the RTP or RTCP packet
type ClientMsg struct {
	Kind  Kind
	Track uint8
	Layer uint8
}

// AppendClientMsg appends m's header and payload to b.
func AppendClientMsg(b []byte, m ClientMsg, payload []byte) []byte {
	b = append(b, byte(m.Kind), m.Track, m.Layer, 0)
	return append(b, payload...)
}

// ParseClientMsg splits a client message into its header and payload.
func ParseClientMsg(b []byte) (ClientMsg, []byte, error) {
	if len(b) < ClientMsgLen {
		return ClientMsg{}, nil, ErrShort
	}
	m := ClientMsg{Kind: Kind(b[0]), Track: b[1], Layer: b[2]}
	if m.Kind == 0 || m.Kind > maxClientKind || b[3] != 0 {
		return ClientMsg{}, nil, ErrField
	}
	return m, b[ClientMsgLen:], nil
}

// SubTrack is a KindTrack message's payload: a track a subscribing client
// receives, and who publishes it:
//
//	publisher (length byte 1..MaxName, bytes), then the track as in a
//	hello (id, kind, layers, channels, clock rate, mime, fmtp)
type SubTrack struct {
	Publisher string
	ClientTrack
}

// AppendSubTrack appends t's encoding to b.
func AppendSubTrack(b []byte, t *SubTrack) ([]byte, error) {
	if len(t.Publisher) == 0 || len(t.Publisher) > MaxName {
		return b, ErrTooLong
	}
	b = append(b, byte(len(t.Publisher)))
	b = append(b, t.Publisher...)
	return appendTrack(b, &t.ClientTrack)
}

// ParseSubTrack reads a KindTrack payload; trailing bytes are refused.
func ParseSubTrack(b []byte) (SubTrack, error) {
	r := reader{b: b}
	var t SubTrack
	t.Publisher = string(r.name(1, MaxName))
	ct, err := r.track()
	if err != nil {
		return SubTrack{}, err
	}
	if len(r.b) != 0 {
		return SubTrack{}, ErrField
	}
	t.ClientTrack = ct
	return t, nil
}

// Welcome statuses (the node's answer to a hello).
const (
	WelcomeOK uint8 = 0
)

// AppendWelcome appends a welcome body: status, then the counter of the
// hello it answers (8 bytes).
func AppendWelcome(b []byte, status uint8, hello uint64) []byte {
	return binary.BigEndian.AppendUint64(append(b, status), hello)
}

// ParseWelcome reads a welcome body.
func ParseWelcome(b []byte) (status uint8, hello uint64, err error) {
	if len(b) != 9 {
		return 0, 0, ErrShort
	}
	return b[0], binary.BigEndian.Uint64(b[1:]), nil
}
