package turnchannel

import (
	"errors"

	"github.com/traverse-rtc/traverse/internal/kfast"
)

// Sentinel errors of the TURN offloader.
var (
	// ErrUnsupported: the platform has no eBPF tc programs (not Linux, or a
	// big-endian machine the program is not built for).
	ErrUnsupported = kfast.ErrUnsupported
	// ErrNotIPv4: a flow address is not a specific IPv4 address; it wraps
	// kfast.ErrNotIPv4.
	ErrNotIPv4 = errors.New("turnchannel: only IPv4 flows with specific addresses")
	// ErrNoRoute: the client and the peer are not both local, or not both
	// reached through Ethernet devices; the flow stays in user space.
	ErrNoRoute = errors.New("turnchannel: no route the program can use")
	// ErrFull: MaxFlows flows are installed.
	ErrFull = kfast.ErrFull
	// ErrConflict: another installed flow uses the same peer and relayed
	// address, or the same client, listener and channel.
	ErrConflict = errors.New("turnchannel: flow conflicts with an installed one")
	// ErrClosed: the offloader is closed.
	ErrClosed = errors.New("turnchannel: closed")
	// ErrConfig: the configuration is invalid.
	ErrConfig = kfast.ErrConfig
)
