// Package turnchannel relays channel-bound TURN flows (RFC 8656 section
// 12, ChannelData) below the socket layer with a tc eBPF program: kernel
// media distribution below the socket layer, as rtpengine's kernel module
// and STUNner's TURN offload do. It implements turn.Offloader.
//
// # The program
//
// internal/kfast/bpf/turnchannel.c runs on the ingress of the interfaces
// packets of an offloaded flow arrive on (TCX, or a clsact filter on
// kernels before 6.6; see internal/kfast). One hash map holds two entries per flow:
//
//   - {client, listener, channel} -> {relayed address, peer}: a ChannelData
//     message from the client loses its 4-byte header and padding and
//     leaves as a plain UDP datagram from the relayed address to the peer;
//   - {peer, relayed address} -> {listener, client, channel}: the peer's
//     datagram gains the header and leaves as ChannelData from the listener
//     to the client.
//
// The data moves by 4 bytes through a per-CPU scratch buffer (kf_move) and
// the packet is resized at its tail, so the UDP header keeps its place and
// CHECKSUM_PARTIAL packets of local senders stay valid; the UDP checksum is
// updated incrementally (RFC 1624) through bpf_l4_csum_replace and the IP
// header checksum recomputed (TTL 64, as the server's sockets send). Each
// entry carries a deadline (CLOCK_MONOTONIC): the earliest expiry of the
// channel, the permission and the allocation; past it the program hands
// packets to user space, which applies RFC 8656's rules to them, so the
// kernel never relays for an expired channel even between the server's
// sweeps. The loader's per-CPU counter slots (packets, data bytes), one
// per direction, feed the server's metrics.
//
// Anything else passes untouched: STUN, Send and Data indications,
// channels not installed, datagrams of other peers or other ports,
// fragments, IP options, malformed ChannelData (shorter than its length,
// or more than 3 bytes after its data: user space decides), GSO packets,
// and packets that would exceed the egress MTU or 2000 data bytes.
//
// # Where packets go
//
// When both the client and the peer are reached through Ethernet devices,
// the program is attached to the ingress of both and rewritten packets are
// sent with bpf_redirect_neigh out of the device the host routes the new
// destination through: they bypass the server's IP stack, netfilter and
// ip_forward. When both are local addresses of the host (everything on lo,
// as in the benchmarks), the program runs on lo's ingress and hands the
// rewritten packet up the stack, which delivers it to the peer's or the
// client's socket. Mixed cases stay in user space (kfast.ErrNoRoute).
//
// IPv4 only: IPv6 flows, TCP, TLS and DTLS clients stay in user space.
package turnchannel
