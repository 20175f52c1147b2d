// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// mediaflow: a tc (TCX ingress) program that forwards the established RTP
// flows of traverse's media proxy below the socket layer. It looks the UDP
// 4-tuple of an IPv4 packet up in the flows map; on a hit it rewrites
// source and destination address and port, decrements the TTL, updates the
// IP header checksum incrementally and the UDP checksum through the
// kernel's helper, counts the packet and its IP length in the flow's slot
// and redirects it out of the flow's egress interface. Everything else
// (no hit, what kf_parse_udp4 refuses, TTL <= 1) passes untouched.
//
// Built into the one object of internal/kfast (bpf/kfast.c, gen.go).

#include "../include/kfast.h"

// flows: the 4-tuple a packet arrives with -> where it goes.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct kf_tuple);
	__type(value, struct kf_out);
} flows SEC(".maps");

SEC("tc")
int mediaflow(struct __sk_buff *skb)
{
	struct kf_udp4 p;
	if (kf_parse_udp4(skb, &p))
		return KF_PASS;
	if (p.ip->ttl <= 1)
		return KF_PASS; // to user space, which sends it with a fresh TTL
	struct kf_out *v = bpf_map_lookup_elem(&flows, &p.t);
	if (!v || !kf_live(v->deadline) || p.tot > v->max_len)
		return KF_PASS;
	struct kf_out o = *v;
	kf_count(o.slot, p.tot);

	__u16 ttl_old = *(__u16 *)&p.ip->ttl; // TTL and protocol
	__u16 ttl_new = ttl_old;
	((__u8 *)&ttl_new)[0] -= 1;
	__u32 pseudo = kf_pseudo(&p.t, &o.to);
	__u32 ports = csum_replace32(0, kf_ports(&p.t), kf_ports(&o.to));
	kf_ip_update(p.ip, csum_replace16(pseudo, ttl_old, ttl_new));
	p.ip->ttl -= 1;
	kf_l4_update(skb, pseudo, ports);

	struct udphdr *udp;
	struct iphdr *ip = kf_headers(skb, &udp);
	if (!ip)
		return TC_ACT_SHOT;
	kf_write_tuple(ip, udp, &o.to);
	return kf_send(&o);
}
