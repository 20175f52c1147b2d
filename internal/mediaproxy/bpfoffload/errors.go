package bpfoffload

import "errors"

// Sentinel errors of the eBPF offloader.
var (
	// ErrUnsupported: the platform has no eBPF tc programs (not Linux, or a big-endian machine the program is not built for).
	ErrUnsupported = errors.New("bpfoffload: eBPF offload needs Linux on a little-endian machine")
	// ErrNotIPv4: a flow address is not a specific IPv4 address.
	ErrNotIPv4 = errors.New("bpfoffload: only IPv4 flows with specific addresses")
	// ErrNoRoute: a flow endpoint is not reachable through an Ethernet
	// interface (no route, a local address, or another device type); the
	// flow stays in user space.
	ErrNoRoute = errors.New("bpfoffload: no Ethernet route")
	// ErrConfig: the configuration is invalid.
	ErrConfig = errors.New("bpfoffload: invalid config")
)
