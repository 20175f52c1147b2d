package sipgw

import (
	"errors"
	"fmt"
)

// Sentinel errors of the gateway.
var (
	// ErrBadSDP: an SDP body did not parse or cannot be proxied; the
	// request gets 488 Not Acceptable Here (RFC 3261 section 21.4.26).
	ErrBadSDP = errors.New("sipgw: bad SDP")
	// ErrMediaRefused: every media address an outside party named (and
	// the address its signaling came from) is refused by the media
	// proxy's destination policy; 488 Not Acceptable Here.
	ErrMediaRefused = fmt.Errorf("%w: every media address refused", ErrBadSDP)
	// ErrSourceStreams: the calls of the request's source already hold
	// their share of the inside port pool (Config.SourceStreams); 503.
	ErrSourceStreams = errors.New("sipgw: source holds its share of media streams")
	// ErrEnded: the call ended while its request was handled.
	ErrEnded = errors.New("sipgw: call ended")
	// ErrConfig: the configuration is invalid (wrapped with the reason).
	ErrConfig = errors.New("sipgw: invalid config")
)
