package bus

import (
	"errors"
	"fmt"
)

// Sentinel errors of the bus package.
var (
	// ErrBadSubjectToken is returned for a node, session or room name that
	// cannot be one token of a NATS subject (see ValidName).
	ErrBadSubjectToken = errors.New("bus: name must be 1-64 characters of A-Z a-z 0-9 _ -")
	// ErrBadMessage is returned for a message that does not decode or
	// misses a required field.
	ErrBadMessage = errors.New("bus: bad message")
	// ErrNoURL is returned by Connect when no server URL is given.
	ErrNoURL = errors.New("bus: no NATS server URL")
	// ErrCredentials is returned for a credentials file or identity that
	// cannot be used (unknown role, bad seed, readable by others).
	ErrCredentials = errors.New("bus: bad credentials")
	// ErrCredentialsMode is returned by LoadIdentity for a credentials
	// file that group or others may read.
	ErrCredentialsMode = errors.New("bus: credentials file readable by others")
	// ErrInsecure is returned by StartEmbedded when asked to accept
	// clients without authentication on an address other hosts reach,
	// without the explicit opt-in (EmbeddedConfig.NoAuthAnyAddress).
	ErrInsecure = errors.New("bus: refusing unauthenticated clients on a non-loopback address")
	// ErrCluster is returned by StartEmbedded for a cluster configuration
	// it cannot use (no secret, a bad route URL).
	ErrCluster = errors.New("bus: bad cluster configuration")
)

// Status is the class of an error that crosses the bus, so that the side
// that receives it can act on it (signal maps it to its client protocol)
// without parsing text.
type Status string

// Status classes.
const (
	StatusBadRequest   Status = "bad_request"  // the request is malformed or invalid (bad SDP, unknown type)
	StatusUnauthorized Status = "unauthorized" // the session lacks the right (publish without the right)
	StatusNotFound     Status = "not_found"    // the session or room is unknown on this node
	StatusConflict     Status = "conflict"     // the session already exists, or the state forbids it
	StatusUnavailable  Status = "unavailable"  // the node is full, draining, or did not answer
	StatusInternal     Status = "internal"     // a bug or an unexpected failure on the node
)

// Error is an error that crosses the bus: a status class plus text.
type Error struct {
	Status  Status `json:"status"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Status, e.Message) }

// Is reports whether target is an *Error of the same status, so that
// errors.Is(err, &bus.Error{Status: bus.StatusNotFound}) works, and whether
// target is the Status sentinel of the same class (see StatusError).
func (e *Error) Is(target error) bool {
	var t *Error
	if errors.As(target, &t) {
		return t.Status == e.Status && (t.Message == "" || t.Message == e.Message)
	}
	return false
}

// Errorf returns an *Error of status s.
func Errorf(s Status, format string, args ...any) *Error {
	return &Error{Status: s, Message: fmt.Sprintf(format, args...)}
}

// StatusOf returns the status class of err: the class of an *Error in its
// chain, StatusInternal for any other non-nil error, "" for nil.
func StatusOf(err error) Status {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return StatusInternal
}

// AsError converts err to an *Error for the wire, keeping an *Error in its
// chain and classifying anything else as internal.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Status: StatusInternal, Message: err.Error()}
}
