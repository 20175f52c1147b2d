package relay

import "errors"

// Errors of New and of the send calls.
var (
	// ErrConfig: the Config is incomplete or out of range.
	ErrConfig = errors.New("relay: invalid config")
	// ErrTooMany: more than MaxNeed nodes need one track (SetNeed).
	ErrTooMany = errors.New("relay: too many nodes")
	// ErrNoRoute: no route to a destination (SendFeedback).
	ErrNoRoute = errors.New("relay: no route to the destination")
)
