package nat

import (
	"errors"
	"fmt"
)

var (
	// ErrConfig is wrapped by every configuration error.
	ErrConfig = errors.New("nat: invalid configuration")
	// ErrUnreachable means the server never answered the first Binding
	// request (after every retransmission): it is down, the address is
	// wrong, or UDP is blocked on the way.
	ErrUnreachable = errors.New("nat: no answer from the STUN server")
	// ErrUDPBlocked means the server never answered over UDP but answers
	// a Binding request over TCP on the same address: a firewall on the
	// way blocks UDP, so only TCP or TLS transports (TURN over TCP/TLS,
	// ICE-TCP) will work. It wraps ErrUnreachable.
	ErrUDPBlocked = fmt.Errorf("nat: UDP is blocked on the way (%w)", ErrUnreachable)
	// ErrNoRFC5780 means the server answers Binding requests but gives no
	// usable OTHER-ADDRESS (RFC 5780 section 7.4), so it cannot run the
	// behaviour discovery tests.
	ErrNoRFC5780 = errors.New("nat: the STUN server does not support RFC 5780 (no OTHER-ADDRESS)")
	// ErrServer means the server answered a test with an error response.
	ErrServer = errors.New("nat: the STUN server answered with an error")

	// errNoResponse is one transaction timing out: for some tests the
	// expected outcome.
	errNoResponse = errors.New("nat: no response")
)
