package stunanswer

import "net/netip"

// Path is the name of the kernel path (logs, the stun path_info metric).
const Path = "ebpf"

// Endpoint is one UDP address the server answers on.
type Endpoint struct {
	// Addr is the address; an unspecified IPv4 address (0.0.0.0) with a
	// port answers on every address of the port.
	Addr netip.AddrPort
	// Other is the OTHER-ADDRESS answers carry (RFC 5780 section 6.1);
	// the zero value: not an RFC 5780 server.
	Other netip.AddrPort
}

// rateSources is how many source addresses the per-source rate table
// holds (least recently used evicted; 16 bytes plus overhead each).
const rateSources = 65536

// Config configures the kernel path.
type Config struct {
	// NetNS is a network namespace file descriptor (0: the current one)
	// whose interfaces the program is attached to.
	NetNS int
	// Clsact attaches with a clsact qdisc filter even where TCX exists.
	Clsact bool
	// Interfaces are the interface names to attach to (empty: every
	// interface that is up, lo included).
	Interfaces []string
	// Endpoints are the addresses answered on (IPv4 only; at most 4).
	Endpoints []Endpoint
	// Rate is how many answers per second one source IPv4 address gets
	// from the kernel (0 or negative: no limit); over it, requests pass to
	// the user-space server, whose own limiter applies. Burst is how many
	// it may get at once (at least 1).
	Rate, Burst int
	// NoAttach loads the program without attaching it (tests run it with
	// BPF_PROG_TEST_RUN).
	NoAttach bool
}
