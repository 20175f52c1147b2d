package mediaflow

import (
	"errors"

	"github.com/traverse-rtc/traverse/internal/kfast"
)

// Sentinel errors of the eBPF media flow offloader.
var (
	// ErrUnsupported: the platform has no eBPF tc programs (not Linux, or a
	// big-endian machine the program is not built for).
	ErrUnsupported = kfast.ErrUnsupported
	// ErrNotIPv4: a flow address is not a specific IPv4 address; it wraps
	// kfast.ErrNotIPv4.
	ErrNotIPv4 = errors.New("mediaflow: only IPv4 flows with specific addresses")
	// ErrNoRoute: a flow endpoint is not reachable through an Ethernet
	// interface (no route, a local address, or another device type); the
	// flow stays in user space. It wraps kfast.ErrNoRoute when the route
	// lookup failed.
	ErrNoRoute = errors.New("mediaflow: no Ethernet route")
	// ErrFull: MaxFlows flows are installed; the flow stays in user space.
	ErrFull = kfast.ErrFull
	// ErrConfig: the configuration is invalid.
	ErrConfig = kfast.ErrConfig
)
