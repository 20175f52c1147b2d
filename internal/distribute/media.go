package distribute

import "encoding/binary"

// kind is what a datagram is, from its first bytes.
type kind uint8

const (
	kindOther kind = iota
	kindRTP
	kindRTCP
)

// classify returns what b is and its SSRC (the sender's SSRC of an RTCP
// packet, RFC 3550 section 6.4). RTP is version 2 with a 12-byte header;
// RTCP is version 2 with a packet type of 192-223 (RFC 5761 section 4,
// the range RTP payload types with the marker bit must avoid) and at
// least its 8-byte header.
func classify(b []byte) (kind, uint32) {
	if len(b) < 8 || b[0]>>6 != 2 {
		return kindOther, 0
	}
	if pt := b[1]; pt >= 192 && pt <= 223 {
		return kindRTCP, binary.BigEndian.Uint32(b[4:8])
	}
	if len(b) < 12 {
		return kindOther, 0
	}
	return kindRTP, binary.BigEndian.Uint32(b[8:12])
}
