// Package relayproto is the wire format of traverse relay nodes (the
// path sequence's second step: a node both peers reach relays between them): the frames a peer
// and a node exchange on the node's one UDP port, and the session grant
// that signaling signs and the node checks before it relays anything.
//
// Frames (first byte; all clear of STUN 0-3, DTLS 20-63, ChannelData 64-79
// and RTP/RTCP 128-191 of RFC 7983, and of client/p2p's 0xE1-0xE3):
//
//	0xE8 bind    peer -> node   grant                       (sent until "ready", then as keepalive)
//	0xEA bound   node -> peer   session(16) side(1) flags(1) (flags: 1 ready = the other side is bound too, 2 full)
//	0xEB data    both ways      payload, opaque             (the node forwards the frame unchanged)
//	0xEC punch   node -> peer   session(16)                 (opens the node's own NAT filter; peers ignore it)
//
// A grant (signed by signal's Ed25519 key, verified by nodes with its public
// key, so that a node, a volunteer's above all, can check grants but not
// mint them):
//
//	version(1)=1 expires(8, Unix seconds) session(16) side(1: 0 or 1)
//	nodelen(1) node(1..64) signature(64) over every byte before it
//
// Parsers are pure functions over []byte; encoders append.
package relayproto

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Frame types.
const (
	TypeBind  = 0xE8
	TypeBound = 0xEA
	TypeData  = 0xEB
	TypePunch = 0xEC
)

// Bound flags.
const (
	// FlagReady says both sides of the session are bound: data flows.
	FlagReady = 1
	// FlagFull says the node refused the session: it is at its session cap.
	FlagFull = 2
)

// SessionLen is the length of a session id.
const SessionLen = 16

// Session identifies one relayed session (random, chosen by signaling).
type Session [SessionLen]byte

const (
	grantVersion = 1
	grantFixed   = 1 + 8 + SessionLen + 1 + 1
	// maxExpiry bounds a grant's expiry (year ~36800): any sane time fits
	// and the value survives time.Unix.
	maxExpiry = 1 << 40
	// MaxNodeLen bounds a node id (the bus's subject-token limit).
	MaxNodeLen = 64
	// MaxGrantLen is the longest valid grant.
	MaxGrantLen = grantFixed + MaxNodeLen + ed25519.SignatureSize
	// BoundLen is the length of a bound frame, PunchLen of a punch.
	BoundLen = 1 + SessionLen + 2
	PunchLen = 1 + SessionLen
)

// Errors.
var (
	// ErrMalformed: a frame or grant that does not parse.
	ErrMalformed = errors.New("relayproto: malformed")
	// ErrSignature: a grant whose signature does not verify.
	ErrSignature = errors.New("relayproto: bad grant signature")
	// ErrExpired: a grant past its expiry.
	ErrExpired = errors.New("relayproto: grant expired")
	// ErrOtherNode: a grant for another node.
	ErrOtherNode = errors.New("relayproto: grant for another node")
)

// Grant authorises one side of one session on one node until Expires.
type Grant struct {
	Session Session
	// Side is 0 or 1: the two peers of the session hold one each.
	Side    uint8
	Node    string
	Expires time.Time
}

// AppendGrant appends g signed with key.
func AppendGrant(b []byte, g Grant, key ed25519.PrivateKey) ([]byte, error) {
	if g.Side > 1 || len(g.Node) == 0 || len(g.Node) > MaxNodeLen || g.Expires.Unix() < 0 || g.Expires.Unix() > maxExpiry {
		return b, fmt.Errorf("%w: grant side %d node %q", ErrMalformed, g.Side, g.Node)
	}
	start := len(b)
	b = append(b, grantVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(g.Expires.Unix()))
	b = append(b, g.Session[:]...)
	b = append(b, g.Side, byte(len(g.Node)))
	b = append(b, g.Node...)
	return append(b, ed25519.Sign(key, b[start:])...), nil
}

// ParseGrant parses a grant without checking its signature (see Verify).
func ParseGrant(p []byte) (Grant, error) {
	var g Grant
	if len(p) < grantFixed+1+ed25519.SignatureSize || p[0] != grantVersion {
		return g, fmt.Errorf("%w: grant of %d bytes", ErrMalformed, len(p))
	}
	n := int(p[grantFixed-1])
	if n == 0 || n > MaxNodeLen || len(p) != grantFixed+n+ed25519.SignatureSize {
		return g, fmt.Errorf("%w: grant node length %d", ErrMalformed, n)
	}
	exp := binary.BigEndian.Uint64(p[1:9])
	if exp > maxExpiry {
		return g, fmt.Errorf("%w: grant expiry %d", ErrMalformed, exp)
	}
	g.Expires = time.Unix(int64(exp), 0)
	copy(g.Session[:], p[9:9+SessionLen])
	g.Side = p[9+SessionLen]
	if g.Side > 1 {
		return g, fmt.Errorf("%w: grant side %d", ErrMalformed, g.Side)
	}
	g.Node = string(p[grantFixed : grantFixed+n])
	return g, nil
}

// Verify parses p, checks its signature with pub, that it is for node and
// that it has not expired at now.
func Verify(p []byte, pub ed25519.PublicKey, node string, now time.Time) (Grant, error) {
	g, err := ParseGrant(p)
	if err != nil {
		return g, err
	}
	if g.Node != node {
		return g, ErrOtherNode
	}
	if !now.Before(g.Expires) {
		return g, ErrExpired
	}
	split := len(p) - ed25519.SignatureSize
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, p[:split], p[split:]) {
		return g, ErrSignature
	}
	return g, nil
}

// AppendBind appends a bind frame carrying grant.
func AppendBind(b, grant []byte) []byte { return append(append(b, TypeBind), grant...) }

// AppendBound appends a bound frame.
func AppendBound(b []byte, s Session, side, flags uint8) []byte {
	b = append(b, TypeBound)
	b = append(b, s[:]...)
	return append(b, side, flags)
}

// ParseBound parses a bound frame.
func ParseBound(p []byte) (s Session, side, flags uint8, err error) {
	if len(p) != BoundLen || p[0] != TypeBound {
		return s, 0, 0, fmt.Errorf("%w: bound frame of %d bytes", ErrMalformed, len(p))
	}
	copy(s[:], p[1:])
	return s, p[1+SessionLen], p[2+SessionLen], nil
}

// AppendData appends a data frame carrying payload.
func AppendData(b, payload []byte) []byte { return append(append(b, TypeData), payload...) }

// AppendPunch appends a punch frame.
func AppendPunch(b []byte, s Session) []byte { return append(append(b, TypePunch), s[:]...) }
