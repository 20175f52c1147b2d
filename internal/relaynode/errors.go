package relaynode

import "errors"

// Sentinel errors.
var (
	// ErrConfig: a Config that cannot work.
	ErrConfig = errors.New("relaynode: bad config")
	// ErrDiscovery: the node could not learn its public address from any
	// STUN server.
	ErrDiscovery = errors.New("relaynode: no STUN server answered")
	// ErrFull: the node refused the session (Link.Bind).
	ErrFull = errors.New("relaynode: node full")
	// ErrUnreachable: no answer from the node before the deadline (Link.Bind).
	ErrUnreachable = errors.New("relaynode: node unreachable")
)
