package sipgw

import "errors"

// Sentinel errors of the gateway.
var (
	// ErrBadSDP: an SDP body did not parse or cannot be proxied; the
	// request gets 488 Not Acceptable Here (RFC 3261 section 21.4.26).
	ErrBadSDP = errors.New("sipgw: bad SDP")
	// ErrConfig: the configuration is invalid (wrapped with the reason).
	ErrConfig = errors.New("sipgw: invalid config")
)
