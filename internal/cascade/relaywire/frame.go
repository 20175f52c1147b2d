package relaywire

import "encoding/binary"

// NodeID names a node of the cluster. 0 is no node.
type NodeID uint32

// Magic is the first byte of every relay frame: outside the ranges of STUN
// (0-3), DTLS (20-63), TURN ChannelData (64-79) and RTP/RTCP (128-191), so
// one classifier on a shared port can tell relay frames from the rest.
const Magic = 0xCA

// Version is the protocol version this package speaks. Version 2 seals
// with AES-128-GCM (version 1: AES-256-GCM); a frame of another version
// is refused with ErrVersion.
const Version = 2

// LinkHeaderLen is the size of the clear link header; TagLen the AEAD tag
// after the sealed body. Overhead is what a link adds to a body.
const (
	LinkHeaderLen = 16
	TagLen        = 16
	Overhead      = LinkHeaderLen + TagLen
)

// Type is a frame's type (the low nibble of byte 1).
type Type uint8

// Frame types.
const (
	TypeData   Type = 1 // a data message (media or feedback) with its link sequence
	TypeParity Type = 2 // a Reed-Solomon parity shard over data messages
	TypeNack   Type = 3 // link sequences the receiver misses
	TypeProbe  Type = 4 // a probe for RTT, loss and jitter
	TypeEcho   Type = 5 // the answer to a probe
	// 6-8 are the client frames (client.go).
	maxType = TypeWelcome
)

// LinkHeader is the clear, authenticated start of every frame:
//
//	0      magic 0xCA
//	1      version (high nibble) | type (low nibble)
//	2-3    key epoch
//	4-7    sender node
//	8-15   counter: the AEAD nonce's unique part and the replay window's index
type LinkHeader struct {
	Type    Type
	Epoch   uint16
	Sender  NodeID
	Counter uint64
}

// AppendLinkHeader appends h to b.
func AppendLinkHeader(b []byte, h LinkHeader) []byte {
	b = append(b, Magic, Version<<4|byte(h.Type)&0x0f)
	b = binary.BigEndian.AppendUint16(b, h.Epoch)
	b = binary.BigEndian.AppendUint32(b, uint32(h.Sender))
	return binary.BigEndian.AppendUint64(b, h.Counter)
}

// ParseLinkHeader reads the link header at the start of b.
func ParseLinkHeader(b []byte) (LinkHeader, error) {
	if len(b) < LinkHeaderLen {
		return LinkHeader{}, ErrShort
	}
	if b[0] != Magic {
		return LinkHeader{}, ErrMagic
	}
	if b[1]>>4 != Version {
		return LinkHeader{}, ErrVersion
	}
	t := Type(b[1] & 0x0f)
	if t == 0 || t > maxType {
		return LinkHeader{}, ErrType
	}
	return LinkHeader{
		Type:    t,
		Epoch:   binary.BigEndian.Uint16(b[2:]),
		Sender:  NodeID(binary.BigEndian.Uint32(b[4:])),
		Counter: binary.BigEndian.Uint64(b[8:]),
	}, nil
}
