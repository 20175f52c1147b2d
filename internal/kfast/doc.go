// Package tcattach attaches traverse's tc eBPF programs (the media proxy's
// internal/mediaproxy/bpfoffload and the TURN relay's
// internal/turn/turnoffload) to an interface's ingress: with TCX (Linux
// 6.6 and later) where the kernel has it, else as a direct-action filter
// on a clsact qdisc. It also runs code in a given network namespace and
// finds the interface the host routes a destination out of. Load and Set
// are what both offloaders share: sizing and loading their objects, and
// keeping their program on each interface a flow arrives on.
package kfast
