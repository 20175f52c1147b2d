package signal

import "errors"

// Status classes carried by error messages to clients (docs/signal.md). A
// client decides what to do from the class: retry later (unavailable,
// rate-limited), fix its request (bad-request), get a new token
// (unauthorized), or give up (forbidden, internal).
const (
	ClassBadRequest   = "bad-request"
	ClassUnauthorized = "unauthorized"
	ClassForbidden    = "forbidden"
	ClassRateLimited  = "rate-limited"
	ClassUnavailable  = "unavailable"
	ClassInternal     = "internal"
)

// Sentinel errors. Each maps to one status class through Class.
var (
	// ErrTokenMalformed: the token is not three base64url parts with a JSON
	// header and claims.
	ErrTokenMalformed = errors.New("token: malformed")
	// ErrTokenSignature: the signature does not match the configured key.
	ErrTokenSignature = errors.New("token: bad signature")
	// ErrTokenExpired: the token's exp is in the past.
	ErrTokenExpired = errors.New("token: expired")
	// ErrTokenNotYetValid: the token's nbf is in the future.
	ErrTokenNotYetValid = errors.New("token: not yet valid")
	// ErrTokenClaims: a required claim (room, sub, exp) is missing or invalid.
	ErrTokenClaims = errors.New("token: missing or invalid claims")

	// ErrMessage: an inbound signaling message is not valid JSON of a known
	// type with its required fields.
	ErrMessage = errors.New("signal: bad message")
	// ErrTooLarge: an inbound message exceeds the size limit.
	ErrTooLarge = errors.New("signal: message too large")
	// ErrRateLimited: the client sent messages faster than the limit.
	ErrRateLimited = errors.New("signal: rate limited")
	// ErrState: the message is not valid in the session's state (an offer
	// before join, a second join).
	ErrState = errors.New("signal: message not valid in this state")
	// ErrForbidden: the token does not grant the right the request needs
	// (publishing without the publish right).
	ErrForbidden = errors.New("signal: not permitted by token")
	// ErrSDP: an SDP body could not be parsed or lacks what the request
	// needs (ICE credentials, a media section).
	ErrSDP = errors.New("signal: bad sdp")
	// ErrNoNode: no SFU node is announced, so the client cannot be placed.
	ErrNoNode = errors.New("signal: no sfu node available")
	// ErrRejected: the SFU node refused a request as invalid (an offer it
	// cannot take); the session goes on.
	ErrRejected = errors.New("signal: refused by the sfu node")
	// ErrNode: the SFU node failed or did not answer in time.
	ErrNode = errors.New("signal: sfu node error")
	// ErrJoinTimeout: the WebSocket sent no join within Config.JoinTimeout
	// of opening.
	ErrJoinTimeout = errors.New("signal: no join in time")
	// ErrConfig: the configuration is invalid.
	ErrConfig = errors.New("signal: invalid config")
)

// Class returns the status class of err for the client.
func Class(err error) string {
	switch {
	case errors.Is(err, ErrTokenMalformed), errors.Is(err, ErrTokenSignature),
		errors.Is(err, ErrTokenExpired), errors.Is(err, ErrTokenNotYetValid),
		errors.Is(err, ErrTokenClaims):
		return ClassUnauthorized
	case errors.Is(err, ErrForbidden):
		return ClassForbidden
	case errors.Is(err, ErrMessage), errors.Is(err, ErrTooLarge),
		errors.Is(err, ErrState), errors.Is(err, ErrSDP), errors.Is(err, ErrRejected),
		errors.Is(err, ErrJoinTimeout):
		return ClassBadRequest
	case errors.Is(err, ErrRateLimited):
		return ClassRateLimited
	case errors.Is(err, ErrNoNode), errors.Is(err, ErrNode):
		return ClassUnavailable
	default:
		return ClassInternal
	}
}
