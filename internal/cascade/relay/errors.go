package relay

import "errors"

// Errors of New and of the send calls.
var (
	// ErrConfig: the Config is incomplete or out of range.
	ErrConfig = errors.New("relay: invalid config")
	// ErrTooMany: more than MaxNeed nodes need one track (SetNeed,
	// SetForward).
	ErrTooMany = errors.New("relay: too many nodes")
	// ErrName: a track's room, publisher or track name is longer than
	// relaywire.MaxName (SetForward).
	ErrName = errors.New("relay: name too long")
	// ErrNoRoute: no route to a destination (SendFeedback).
	ErrNoRoute = errors.New("relay: no route to the destination")
	// ErrNoTrack: a client's layer choice names a track index it was not
	// given, or a layer its track does not have (ClientLayerChooser).
	ErrNoTrack = errors.New("relay: no such track or layer")
)
