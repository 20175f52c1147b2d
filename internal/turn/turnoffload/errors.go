package turnoffload

import "errors"

// Sentinel errors of the TURN offloader.
var (
	// ErrUnsupported: the platform has no eBPF tc programs (not Linux, or a
	// big-endian machine the program is not built for).
	ErrUnsupported = errors.New("turnoffload: eBPF offload needs Linux on a little-endian machine")
	// ErrNotIPv4: a flow address is not a specific IPv4 address.
	ErrNotIPv4 = errors.New("turnoffload: only IPv4 flows with specific addresses")
	// ErrNoRoute: the client and the peer are not both local, or not both
	// reached through Ethernet devices; the flow stays in user space.
	ErrNoRoute = errors.New("turnoffload: no route the program can use")
	// ErrFull: MaxFlows flows are installed.
	ErrFull = errors.New("turnoffload: flow table full")
	// ErrConflict: another installed flow uses the same peer and relayed
	// address, or the same client, listener and channel.
	ErrConflict = errors.New("turnoffload: flow conflicts with an installed one")
	// ErrClosed: the offloader is closed.
	ErrClosed = errors.New("turnoffload: closed")
	// ErrConfig: the configuration is invalid.
	ErrConfig = errors.New("turnoffload: invalid config")
)
