// Package mediaflow moves latched media proxy flows below the socket
// layer with an eBPF program on internal/kfast (the kernel fast path: media
// never climbs the TCP/IP stack). It is the second owner of
// mediaproxy.Offloader, next to nftoffload.
//
// # The program
//
// internal/kfast/bpf/mediaflow.c is a tc program attached to the ingress of the gateway's
// interfaces with TCX (Linux 6.6 or later; a clsact filter before that,
// see internal/kfast). It looks an IPv4 UDP packet's 4-tuple
// {saddr, daddr, sport, dport} up in one hash map; a hit carries the
// rewrite {new saddr, daddr, sport, dport}, the egress interface and a
// counter slot. The program rewrites the headers, decrements the TTL,
// fixes the IP checksum incrementally and the UDP checksum with
// bpf_l4_csum_replace (which handles the CHECKSUM_PARTIAL packets local
// senders hand to veth and keeps a zero UDP checksum zero, RFC 768),
// counts the packet and its IP length in the flow's per-CPU slot, and
// sends it with bpf_redirect_neigh, which routes it out of the egress
// interface and fills in the Ethernet addresses from the neighbour table
// (resolving the next hop when the entry is missing). Anything else (no
// hit, not UDP over IPv4, fragments, IP options, inconsistent lengths,
// TTL <= 1, truncated headers, GSO packets) is handed on untouched
// (TC_ACT_UNSPEC: the next TCX program or the stack), so the media
// proxy's sockets still see it.
//
// # Why tc and not XDP
//
// XDP would skip the skb allocation, but on the devices this runs on it
// is the less forgiving choice: bpf_redirect_neigh (tc only) resolves the
// next hop's MAC, so no flow has to wait in user space for a neighbour
// entry, and works on any Ethernet device; XDP_REDIRECT between veths needs
// an XDP program (or GRO) on the receiving peer, which sits in another
// namespace, and veth converts every skb a local sender made into an
// xdp_buff by copying it. tc also sees the skbs of generic devices
// unchanged, and TCX composes with other programs on the same hook.
//
// # Where it attaches
//
// On Offload the egress interfaces come from a route lookup (netlink) of
// the client and the server; the program is attached to the ingress of the
// interfaces towards the client and towards the server's source address
// (routing is assumed symmetric; a packet arriving elsewhere still reaches
// user space, which forwards it). Attachments stay until Close. Local
// destinations and non-Ethernet devices are refused, so those flows stay in
// user space.
//
// Forwarded packets bypass the IP stack of the gateway: routing decisions
// other than the egress route, netfilter (no forward filter, no
// conntrack) and net.ipv4.ip_forward do not apply to them. IPv4 only
// (IPv4-mapped IPv6 addresses are unmapped).
//
// The program is built into internal/kfast's one object with bpf2go (see
// internal/kfast/gen.go); the generated Go and object files are committed.
package mediaflow
