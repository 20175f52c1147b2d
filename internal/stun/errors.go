package stun

import "errors"

var (
	// ErrConfig is wrapped by every configuration error.
	ErrConfig = errors.New("stun: invalid configuration")
	// ErrClosed is returned by Run on a server that was already closed.
	ErrClosed = errors.New("stun: server closed")
	// ErrNotReady is reported by Ready before the server serves or after
	// it stopped.
	ErrNotReady = errors.New("stun: not serving")
)
