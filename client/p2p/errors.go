package p2p

import "errors"

var (
	// ErrConfig is returned for an invalid option.
	ErrConfig = errors.New("p2p: invalid configuration")
	// ErrPacket is returned by ParsePacket for a datagram that is not a
	// well-formed p2p packet (too short, unknown type).
	ErrPacket = errors.New("p2p: malformed packet")
	// ErrAuth is returned for a packet whose authentication tag does not
	// verify: forged, corrupted, or from another session.
	ErrAuth = errors.New("p2p: packet authentication failed")
	// ErrReplay is returned for a packet whose nonce was already seen or
	// lies behind the replay window.
	ErrReplay = errors.New("p2p: replayed packet")
	// ErrSignal is returned for a malformed or unexpected signaling message.
	ErrSignal = errors.New("p2p: bad signaling message")
	// ErrHandshake is returned when the Noise handshake fails or the peer's
	// static key is not the one pinned with WithPeerKey.
	ErrHandshake = errors.New("p2p: handshake failed")
	// ErrNoPath is returned when no path to the peer works: direct probing
	// and every TURN transport failed, or the live path died.
	ErrNoPath = errors.New("p2p: no path to peer")
	// ErrClosed is returned by a closed Conn.
	ErrClosed = errors.New("p2p: connection closed")
	// ErrTooBig is returned by WriteDatagram for a payload above MaxPayload.
	ErrTooBig = errors.New("p2p: datagram too big")
)
