package sfu

import "errors"

// Sentinel errors of the sfu package.
var (
	// ErrConfig is returned for an invalid Config.
	ErrConfig = errors.New("sfu: invalid config")
	// ErrFastPathKeys is returned when a peer connection's SRTP keys cannot
	// be derived for the fast path (the node is not the DTLS server, a
	// cipher suite or SRTP profile it does not know, secrets not seen);
	// that subscriber stays on pion's write path.
	ErrFastPathKeys = errors.New("sfu: fast path: no SRTP keys")
)

var (
	// errNoOffer: a glare was to be resolved but the node has no
	// outstanding offer or no client description to answer it with.
	errNoOffer = errors.New("sfu: no outstanding offer to withdraw")
	// errNoMid: an m-section of the node's offer has no mid (RFC 8843
	// section 9.1 requires one under BUNDLE).
	errNoMid = errors.New("sfu: offer m-section without mid")
)
