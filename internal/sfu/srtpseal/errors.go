package srtpseal

import "errors"

// ErrNoKeys is returned when a peer connection's SRTP keys cannot be
// derived (the node is not the DTLS server, a cipher suite or SRTP
// profile this package does not know, secrets not seen, a GCM salt of the
// wrong length); the caller leaves that connection to pion.
var ErrNoKeys = errors.New("srtpseal: no SRTP keys")
