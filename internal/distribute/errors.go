package distribute

import "errors"

// Sentinel errors of the table. The HTTP API and the bus map them to
// status classes (Status).
var (
	// ErrBadStream is returned for a stream whose destination is not one
	// of the server's listening addresses, or a malformed one.
	ErrBadStream = errors.New("distribute: bad stream")
	// ErrBadReceiver is returned for a receiver address that is not a
	// unicast address and port.
	ErrBadReceiver = errors.New("distribute: bad receiver address")
	// ErrRefused is returned for a receiver the address policy refuses
	// (internal/addrpolicy: private, loopback, the server's own ports...).
	ErrRefused = errors.New("distribute: receiver address refused by policy")
	// ErrExists is returned when adding a stream that exists.
	ErrExists = errors.New("distribute: stream exists")
	// ErrNotFound is returned for a stream or receiver that does not exist.
	ErrNotFound = errors.New("distribute: no such stream or receiver")
	// ErrLimit is returned when a limit (MaxStreams, MaxReceivers) would
	// be exceeded.
	ErrLimit = errors.New("distribute: limit reached")
	// ErrUnsupported is returned by New where the batched socket layer is
	// not available.
	ErrUnsupported = errors.New("distribute: not supported on this platform")
)
