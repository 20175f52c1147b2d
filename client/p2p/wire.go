package p2p

import (
	"encoding/binary"
	"fmt"
)

// Wire format of every datagram between two peers, on any path (direct or
// through a TURN relay, which forwards it unchanged):
//
//	0      type: 0xE1 probe, 0xE2 ack, 0xE3 data
//	1..8   session: the first 8 bytes of the Noise handshake hash
//	9..16  nonce: the sender's packet counter, big endian, never reused
//	17..   ChaCha20-Poly1305(key of the sender's direction, nonce,
//	       ad = bytes 0..16, body), 16-byte tag last
//
// Bodies (plaintext):
//
//	probe  txid(8) path(1)     txid echoed by the ack; path is the kind
//	                           of the sender's local side (PathKind)
//	ack    txid(8)
//	data   seq(8) payload      seq counts data packets from 0, per sender
//
// The first byte keeps clear of STUN (0-3), DTLS (20-63), TURN ChannelData
// (64-79) and RTP/RTCP (128-191) so that the packets share a socket with
// them (RFC 7983 section 7).
const (
	typeProbe byte = 0xE1
	typeAck   byte = 0xE2
	typeData  byte = 0xE3

	headerLen = 17
	tagLen    = 16
	// Overhead is the bytes a data packet adds to its payload.
	Overhead = headerLen + tagLen + 8
	// MaxPayload is the largest payload WriteDatagram takes: a 1280-byte
	// IPv6 minimum MTU datagram, less IP/UDP (48) and TURN ChannelData (4)
	// headers and Overhead.
	MaxPayload = 1280 - 48 - 4 - Overhead

	probeBodyLen = 9
	ackBodyLen   = 8
)

// Header is the clear part of a packet.
type Header struct {
	Type    byte
	Session [8]byte
	Nonce   uint64
}

// ParseHeader parses the clear header of b and returns it with the sealed
// body. It does no cryptography: Open authenticates.
func ParseHeader(b []byte) (Header, []byte, error) {
	var h Header
	if len(b) < headerLen+tagLen {
		return h, nil, fmt.Errorf("%w: %d bytes", ErrPacket, len(b))
	}
	h.Type = b[0]
	if h.Type != typeProbe && h.Type != typeAck && h.Type != typeData {
		return h, nil, fmt.Errorf("%w: type %#x", ErrPacket, h.Type)
	}
	copy(h.Session[:], b[1:9])
	h.Nonce = binary.BigEndian.Uint64(b[9:17])
	return h, b[headerLen:], nil
}

// appendHeader appends h's 17 bytes.
func appendHeader(b []byte, h Header) []byte {
	b = append(b, h.Type)
	b = append(b, h.Session[:]...)
	return binary.BigEndian.AppendUint64(b, h.Nonce)
}

// IsPacket reports whether b looks like a p2p packet (by its first byte),
// for demultiplexing a shared socket.
func IsPacket(b []byte) bool { return len(b) > 0 && b[0] >= typeProbe && b[0] <= typeData }

// parseBody checks a decrypted body's length for its type.
func parseBody(typ byte, body []byte) error {
	switch typ {
	case typeProbe:
		if len(body) != probeBodyLen {
			return fmt.Errorf("%w: probe body %d bytes", ErrPacket, len(body))
		}
	case typeAck:
		if len(body) != ackBodyLen {
			return fmt.Errorf("%w: ack body %d bytes", ErrPacket, len(body))
		}
	case typeData:
		if len(body) < 8 {
			return fmt.Errorf("%w: data body %d bytes", ErrPacket, len(body))
		}
	}
	return nil
}

// replayWindow accepts each nonce once, within a window of the last
// windowBits nonces (the WireGuard/IPsec sliding bitmap, RFC 6479 style):
// reordering up to that many packets is accepted, older ones are dropped.
const windowBits = 2048

type replayWindow struct {
	top  uint64 // highest nonce accepted + 1 (0: none yet)
	bits [windowBits / 64]uint64
}

// check reports whether n is new, without recording it.
func (w *replayWindow) check(n uint64) bool {
	if n == ^uint64(0) {
		return false
	}
	if n+1 > w.top {
		return true
	}
	if w.top-n > windowBits-64 { // the oldest word is being reused
		return false
	}
	return w.bits[(n/64)%uint64(len(w.bits))]&(1<<(n%64)) == 0
}

// accept records n, which check approved (after authentication, so a
// forged packet cannot move the window).
func (w *replayWindow) accept(n uint64) {
	if n+1 > w.top {
		// Clear the words the window slides over (stale bits from
		// windowBits nonces ago).
		if w.top > 0 {
			oldWord, newWord := (w.top-1)/64, n/64
			for i := oldWord + 1; i <= newWord && i-oldWord <= uint64(len(w.bits)); i++ {
				w.bits[i%uint64(len(w.bits))] = 0
			}
		}
		w.top = n + 1
	}
	w.bits[(n/64)%uint64(len(w.bits))] |= 1 << (n % 64)
}
