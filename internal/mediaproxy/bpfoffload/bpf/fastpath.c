// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// fastpath: a tc (clsact ingress, attached with TCX) program that forwards
// established media flows of the traverse media proxy below the socket
// layer. It looks the UDP 4-tuple of an IPv4 packet up in the flows map;
// on a hit it rewrites source and destination address and port, decrements
// the TTL, updates the IP header checksum incrementally and the UDP checksum
// through the kernel's helper (which handles CHECKSUM_PARTIAL skbs from
// local senders and keeps a zero UDP checksum zero), counts the packet in the flow's per-CPU slot and
// redirects it with bpf_redirect_neigh, which routes it out of the flow's
// egress interface and resolves the next hop's MAC. Everything else
// (no hit, not IPv4/UDP, fragments, IP options, TTL <= 1, truncated or
// GSO packets) passes to the stack untouched.
//
// Regenerate with `go generate` in the package directory (needs clang and the
// libbpf-dev and linux-libc-dev headers; see gen.go).

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "../../../bpfinclude/csum.h"

// flow_key is the 4-tuple a packet arrives with (network byte order).
struct flow_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
};

// flow_value is the rewrite and the egress interface, the same in every
// CPU's slot, and that CPU's counters.
struct flow_value {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 ifindex;
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

#define IP_OFF ETH_HLEN
#define UDP_OFF (IP_OFF + sizeof(struct iphdr))
#define UDP_CSUM_OFF (UDP_OFF + __builtin_offsetof(struct udphdr, check))
// PASS hands the packet on: to the next TCX program, or to the stack.
#define PASS TC_ACT_UNSPEC
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

SEC("tc")
int fastpath_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);

	if ((void *)(udp + 1) > data_end)
		return PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PASS;
	if (ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return PASS;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return PASS;
	if (ip->ttl <= 1)
		return PASS; // to user space, which sends it with a fresh TTL
	__u32 tot = bpf_ntohs(ip->tot_len);
	if (tot < sizeof(struct iphdr) + sizeof(struct udphdr) || tot > skb->len - ETH_HLEN)
		return PASS; // truncated
	if (skb->gso_size)
		return PASS;

	struct flow_key k = {
		.saddr = ip->saddr,
		.daddr = ip->daddr,
		.sport = udp->source,
		.dport = udp->dest,
	};
	struct flow_value *v = bpf_map_lookup_elem(&flows, &k);
	if (!v)
		return PASS;

	// Per-CPU slot: plain adds.
	v->packets++;
	v->bytes += tot;

	__be32 saddr = v->saddr, daddr = v->daddr;
	__u32 ifindex = v->ifindex;
	// The ports as the one 32-bit word they are in memory.
	__u32 ports_old = *(__u32 *)&udp->source;
	__u32 ports_new = (__u32)v->sport | (__u32)v->dport << 16;
	__u16 ttl_old = *(__u16 *)&ip->ttl; // TTL and protocol
	__u16 ttl_new = ttl_old;
	((__u8 *)&ttl_new)[0] -= 1;

	// One's complement differences (RFC 1624) of the rewritten words.
	__u32 addrs = csum_add(csum_add(csum_add(~k.saddr, ~k.daddr), saddr), daddr);
	__u32 ports = csum_add(~ports_old, ports_new);

	// The IP header checksum is always complete: update it in place.
	ip->check = ~csum_fold(csum_add(csum_add(csum_add((__u16)~ip->check, addrs), (__u16)~ttl_old), ttl_new));
	ip->ttl -= 1;

	// The UDP checksum goes through the helper, which knows the skb's
	// checksum state: a CHECKSUM_PARTIAL packet (local senders on veth)
	// takes only the pseudo-header change, a zero checksum stays zero.
	// The helper may move the packet: packet pointers are reloaded after.
	bpf_l4_csum_replace(skb, UDP_CSUM_OFF, 0, addrs, BPF_F_MARK_MANGLED_0 | BPF_F_PSEUDO_HDR);
	bpf_l4_csum_replace(skb, UDP_CSUM_OFF, 0, ports, BPF_F_MARK_MANGLED_0);

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip = data + IP_OFF;
	udp = data + UDP_OFF;
	if ((void *)(udp + 1) > data_end)
		return TC_ACT_SHOT;
	ip->saddr = saddr;
	ip->daddr = daddr;
	*(__u32 *)&udp->source = ports_new;
	return bpf_redirect_neigh(ifindex, NULL, 0, 0);
}

char __license[] SEC("license") = "Dual MIT/GPL";
