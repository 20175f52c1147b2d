package turnchannel

import "errors"

// Sentinel errors of the TURN offloader; the others are kfast's
// (ErrUnsupported, ErrNotIPv4, ErrNoRoute: the client and the peer are not
// both local or not both reached through Ethernet devices, ErrFull,
// ErrConfig).
var (
	// ErrConflict: another installed flow uses the same peer and relayed
	// address, or the same client, listener and channel.
	ErrConflict = errors.New("turnchannel: flow conflicts with an installed one")
	// ErrClosed: the offloader is closed.
	ErrClosed = errors.New("turnchannel: closed")
)
