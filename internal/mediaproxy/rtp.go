package mediaproxy

import "encoding/binary"

// RTPSSRC returns the SSRC of an RTP packet (RFC 3550 section 5.1: bytes
// 8 to 11 of the fixed header). It checks only what demultiplexing needs:
// version 2 and a full fixed header; pion/rtp parses the rest where needed.
func RTPSSRC(b []byte) (uint32, error) {
	if len(b) < 12 || b[0]>>6 != 2 {
		return 0, ErrNotRTP
	}
	return binary.BigEndian.Uint32(b[8:12]), nil
}

// RTCPSenderSSRC returns the SSRC of the sender of an RTCP (compound)
// packet: bytes 4 to 7 of its first packet, the sender of an SR or RR, the
// source of an SDES chunk or BYE, the sender of feedback (RFC 3550 section
// 6.4, RFC 4585 section 6.1). Version 2 and a packet type in the RTCP range
// 192-223 (RFC 5761 section 4) are required.
func RTCPSenderSSRC(b []byte) (uint32, error) {
	if len(b) < 8 || b[0]>>6 != 2 || b[1] < 192 || b[1] > 223 {
		return 0, ErrNotRTP
	}
	return binary.BigEndian.Uint32(b[4:8]), nil
}
