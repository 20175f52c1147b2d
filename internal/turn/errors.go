package turn

import "errors"

var (
	// ErrConfig wraps every configuration error returned by New.
	ErrConfig = errors.New("turn: invalid configuration")
	// ErrUsers wraps every error of a NAME:PASSWORD credential or a users
	// file (ParseUser, ParseUsers, LoadUsers).
	ErrUsers = errors.New("turn: bad users")
	// ErrClosed is returned by Run after Close, or by a second Run.
	ErrClosed = errors.New("turn: server closed")
	// ErrUnsupported is returned by New where the relay engine (epoll,
	// recvmmsg) is not available.
	ErrUnsupported = errors.New("turn: relay engine needs linux")
	// ErrNoRelayPort is returned when every port of the relay port range is
	// in use (508 Insufficient Capacity, RFC 8656 section 7.2).
	ErrNoRelayPort = errors.New("turn: relay port range exhausted")
	// ErrNoReservation is returned for an Allocate whose RESERVATION-TOKEN
	// names no held port (unknown, used or expired: 508 Insufficient
	// Capacity, RFC 8656 section 7.2).
	ErrNoReservation = errors.New("turn: no such port reservation")
	// ErrMalformed is returned by the parsers for input that is not a
	// well-formed message of the kind they parse.
	ErrMalformed = errors.New("turn: malformed message")
)
