// Package rtpcodectest builds codec payloads for tests.
package rtpcodectest

import "encoding/binary"

// VP8Key returns the first RTP payload of a VP8 key frame of w x h: a
// payload descriptor with a 15-bit picture id (RFC 7741 section 4.2), then
// the frame tag, start code and dimensions (RFC 6386 section 9.1), with an
// upscaling mode in the dimensions' top bits.
func VP8Key(w, h uint16) []byte {
	p := []byte{0x90, 0x80, 0x81, 0x23, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0, 0, 0, 0, 0x11}
	binary.LittleEndian.PutUint16(p[10:], w|0x4000)
	binary.LittleEndian.PutUint16(p[12:], h|0xc000)
	return p
}
