// Package distribution is the kernel path of internal/distribute (seed
// D's distribution table): the tc program distribute (internal/kfast,
// bpf/distribute.c) sends each RTP packet of a stream to every receiver
// with bpf_clone_redirect (the last with bpf_redirect), rewriting addresses, ports, Ethernet
// addresses and checksums per receiver, and counts each receiver in a
// counter slot of the kfast loader with the time of its last packet. It
// implements distribute.Kernel; the user-space path stays behind it for
// whatever it passes (RTCP, unresolved receivers, strangers).
package distribution
