package relaywire

import "errors"

// Errors of the parsers and of the link's authentication. Each is a drop
// reason the endpoint counts.
var (
	// ErrShort: the datagram ends before a field it must hold.
	ErrShort = errors.New("relaywire: packet too short")
	// ErrMagic: the first byte is not Magic (not a relay frame).
	ErrMagic = errors.New("relaywire: not a relay frame")
	// ErrVersion: a protocol version this node does not speak.
	ErrVersion = errors.New("relaywire: unknown version")
	// ErrType: a frame type this node does not know.
	ErrType = errors.New("relaywire: unknown frame type")
	// ErrField: a field holds a value out of its range (a count above its
	// maximum, a zero hop limit on the wire, an empty destination list).
	ErrField = errors.New("relaywire: field out of range")
	// ErrTooLong: an encoder was given more than a field holds (a name over
	// MaxName bytes, more than MaxDst destinations or MaxNack sequences).
	ErrTooLong = errors.New("relaywire: value too long for its field")
	// ErrAuth: the AEAD tag does not verify (forged, corrupted, or sealed
	// with another link's key or epoch).
	ErrAuth = errors.New("relaywire: authentication failed")
	// ErrReplay: the counter was seen already or is older than the window.
	ErrReplay = errors.New("relaywire: replayed or too old")
	// ErrEpoch: sealed under an epoch this link holds no key for.
	ErrEpoch = errors.New("relaywire: unknown key epoch")
	// ErrPeer: the sender field names another node than this link's peer.
	ErrPeer = errors.New("relaywire: sender is not this link's peer")
)
