package portmap

import (
	"errors"
	"fmt"
)

var (
	// ErrConfig is wrapped by every configuration error.
	ErrConfig = errors.New("portmap: invalid configuration")
	// ErrNoGateway means no default route with a next hop was found (and
	// Config.Gateway was not set).
	ErrNoGateway = errors.New("portmap: no default gateway")
	// ErrUnavailable means the gateway answered none of PCP, NAT-PMP and
	// UPnP IGD, or every one that answered refused the mapping. The error
	// Map returns wraps it and each protocol's own error.
	ErrUnavailable = errors.New("portmap: the gateway offers no port mapping")
	// ErrNoAnswer means a protocol's exchange got no valid answer from the
	// gateway before its deadline.
	ErrNoAnswer = errors.New("portmap: no answer from the gateway")
	// ErrMalformed is wrapped by every parse error of an outside message.
	ErrMalformed = errors.New("portmap: malformed message")
	// ErrClosed is returned by calls on a closed Client or Mapping.
	ErrClosed = errors.New("portmap: closed")
)

// Protocol is a port-mapping protocol.
type Protocol int

// The protocols, in the order Map tries them.
const (
	PCP Protocol = iota + 1
	PMP
	UPnP
)

func (p Protocol) String() string {
	switch p {
	case PCP:
		return "pcp"
	case PMP:
		return "nat-pmp"
	case UPnP:
		return "upnp-igd"
	}
	return fmt.Sprintf("Protocol(%d)", int(p))
}

// ResultError is a refusal by the router: a PCP result code (RFC 6887
// section 7.4), a NAT-PMP result code (RFC 6886 section 3.5) or a UPnP
// SOAP fault's errorCode (UPnP IGD WANIPConnection:2, section 2.4).
type ResultError struct {
	Protocol Protocol
	Code     int
	Text     string
}

func (e *ResultError) Error() string {
	return fmt.Sprintf("portmap: %s refused: %s (%d)", e.Protocol, e.Text, e.Code)
}

// resultError is the ResultError of a gateway's result code, named from
// the protocol's table of result texts.
func resultError(p Protocol, code int, texts map[int]string) error {
	t, ok := texts[code]
	if !ok {
		t = "unknown result"
	}
	return &ResultError{Protocol: p, Code: code, Text: t}
}
