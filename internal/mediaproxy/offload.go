package mediaproxy

import "net/netip"

// Flow is one latched media flow, as the kernel sees it: the outside client
// sends from Client to the fixed port Fixed; the proxy forwards from its
// inside port Inside to the server's Server; the server answers from
// ServerSrc (usually Server itself) to Inside, and the proxy forwards from
// Fixed back to Client. Once latched, the 5-tuples identify the flow, so
// the kernel needs no SSRC demultiplexing.
type Flow struct {
	Client    netip.AddrPort
	Fixed     netip.AddrPort
	Inside    netip.AddrPort
	Server    netip.AddrPort
	ServerSrc netip.AddrPort
}

// Offloader moves latched flows into a kernel fast path and back. It has
// two owners: nftables rules (package mediaproxy/nftoffload) and an eBPF
// tc program (package mediaproxy/bpfoffload). Implementations are safe for
// concurrent use.
type Offloader interface {
	// Offload installs forwarding for both directions of flow.
	Offload(flow Flow) error
	// Remove uninstalls it; removing an unknown flow is not an error.
	Remove(flow Flow) error
	// Stats returns the packets and bytes the kernel forwarded for flow,
	// both directions together.
	Stats(flow Flow) (packets, bytes uint64, err error)
}
