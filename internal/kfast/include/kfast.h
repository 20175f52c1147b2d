// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// kfast.h: what every tc program of traverse's kernel fast path
// (internal/kfast) shares: parsing an Ethernet + IPv4 + UDP packet, the
// tuple and output types its maps hold, the per-CPU counter slots, the
// deadline check, the checksum update of a rewrite, writing the new tuple
// and sending the packet on. A program is the lookup and the rewrite of
// its own payload between kf_parse_udp4 and kf_send; see
// internal/kfast/doc.go for the Go side (sizing, attaching, slots).
//
// Programs are built for bpfel only: sums of values as they sit in memory
// (see csum.h) assume the little-endian layout of the tuple.
#ifndef TRAVERSE_KFAST_H
#define TRAVERSE_KFAST_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "csum.h"

// KF_PASS hands a packet on untouched: to the next TCX program, then the
// stack, so the user-space path still sees it.
#define KF_PASS TC_ACT_UNSPEC

#define KF_IP_OFF ETH_HLEN
#define KF_UDP_OFF (KF_IP_OFF + sizeof(struct iphdr))
#define KF_DATA_OFF (KF_UDP_OFF + sizeof(struct udphdr))
#define KF_UDP_CSUM_OFF (KF_UDP_OFF + __builtin_offsetof(struct udphdr, check))
#define KF_HDRS (sizeof(struct iphdr) + sizeof(struct udphdr))

#define KF_IP_MF 0x2000
#define KF_IP_OFFSET 0x1fff

// kf_tuple: a UDP 4-tuple in network byte order (Go: kfast.Tuple).
struct kf_tuple {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
};

// kf_out: the head of every map value (Go: kfast.Out): where a hit goes.
// deadline is CLOCK_MONOTONIC nanoseconds (0: none), past it the packet
// passes to user space; to is the rewritten tuple; ifindex the egress
// interface (0: up the local stack); slot the counter slot; max_len the
// largest IP length the egress takes (a longer result passes).
struct kf_out {
	__u64 deadline;
	struct kf_tuple to;
	__u32 ifindex;
	__u32 slot;
	__u32 max_len;
};

// kf_counters: one counter slot on one CPU (Go: kfast.Counts).
struct kf_counters {
	__u64 packets;
	__u64 bytes;
};

// counters: the per-CPU counter slots, sized and handed out by the
// loader (kfast.Loader.Slot): plain adds, no atomics.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kf_counters);
} counters SEC(".maps");

// kf_udp4 is a parsed packet: the headers (valid until a helper that may
// move the packet), the IP total length and the UDP payload length, and
// the tuple it arrived with.
struct kf_udp4 {
	struct iphdr *ip;
	struct udphdr *udp;
	void *data_end;
	__u32 tot;
	__u32 plen;
	struct kf_tuple t;
};

// kf_parse_udp4 accepts Ethernet + IPv4 without options, not a fragment,
// UDP, with an IP total length within the packet and a UDP length that
// matches it, not a GSO packet. Anything else returns -1: the program
// hands it on (KF_PASS).
static __always_inline int kf_parse_udp4(struct __sk_buff *skb, struct kf_udp4 *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);

	if ((void *)(udp + 1) > data_end)
		return -1;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	if (ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return -1;
	if (ip->frag_off & bpf_htons(KF_IP_MF | KF_IP_OFFSET))
		return -1;
	__u32 tot = bpf_ntohs(ip->tot_len);
	if (tot < KF_HDRS || tot > skb->len - ETH_HLEN)
		return -1; // truncated
	if (bpf_ntohs(udp->len) != tot - sizeof(struct iphdr))
		return -1;
	if (skb->gso_size)
		return -1;
	p->ip = ip;
	p->udp = udp;
	p->data_end = data_end;
	p->tot = tot;
	p->plen = tot - KF_HDRS;
	p->t.saddr = ip->saddr;
	p->t.daddr = ip->daddr;
	p->t.sport = udp->source;
	p->t.dport = udp->dest;
	return 0;
}

// kf_live reports whether an entry with deadline d may still be used.
static __always_inline int kf_live(__u64 d)
{
	return d == 0 || bpf_ktime_get_ns() < d;
}

// kf_count adds one packet of n bytes to slot.
static __always_inline void kf_count(__u32 slot, __u32 n)
{
	struct kf_counters *c = bpf_map_lookup_elem(&counters, &slot);
	if (c) {
		c->packets++;
		c->bytes += n;
	}
}

// kf_ports is a tuple's ports as the one 32-bit word they are in memory.
static __always_inline __u32 kf_ports(const struct kf_tuple *t)
{
	return (__u32)t->sport | (__u32)t->dport << 16;
}

// kf_pseudo is the pseudo-header difference (RFC 1624, memory order) of a
// rewrite from tuple from to tuple to.
static __always_inline __u32 kf_pseudo(const struct kf_tuple *from, const struct kf_tuple *to)
{
	return csum_replace32(csum_replace32(0, from->saddr, to->saddr), from->daddr, to->daddr);
}

// kf_ip_update applies a difference (RFC 1624) to the IP header checksum,
// which is always complete: it is updated in place.
static __always_inline void kf_ip_update(struct iphdr *ip, __u32 diff)
{
	ip->check = ~csum_fold(csum_add((__u16)~ip->check, diff));
}

// kf_l4_update applies a rewrite's differences to the UDP checksum through
// the kernel's helper, which knows the skb's checksum state: a
// CHECKSUM_PARTIAL packet (local senders on veth and lo) takes only the
// pseudo-header part, a zero checksum stays zero (RFC 768). The helper may
// move the packet: header pointers must be reloaded after it.
static __always_inline void kf_l4_update(struct __sk_buff *skb, __u32 pseudo, __u32 hdr)
{
	bpf_l4_csum_replace(skb, KF_UDP_CSUM_OFF, 0, pseudo, BPF_F_MARK_MANGLED_0 | BPF_F_PSEUDO_HDR);
	bpf_l4_csum_replace(skb, KF_UDP_CSUM_OFF, 0, hdr, BPF_F_MARK_MANGLED_0);
}

// kf_headers reloads the header pointers after a helper that may have
// moved the packet; NULL if the packet no longer holds them.
static __always_inline struct iphdr *kf_headers(struct __sk_buff *skb, struct udphdr **udp)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + KF_IP_OFF;
	*udp = data + KF_UDP_OFF;
	if ((void *)(*udp + 1) > data_end)
		return NULL;
	return ip;
}

// kf_write_tuple writes the addresses and ports of t (checksums are the
// caller's).
static __always_inline void kf_write_tuple(struct iphdr *ip, struct udphdr *udp, const struct kf_tuple *t)
{
	ip->saddr = t->saddr;
	ip->daddr = t->daddr;
	*(__u32 *)&udp->source = kf_ports(t);
}

// kf_send sends a rewritten packet on: out of the entry's interface with
// bpf_redirect_neigh, which routes it and fills in the Ethernet addresses
// from the neighbour table (resolving the next hop when the entry is
// missing), or, for an entry without one (both ends local), up the stack.
static __always_inline int kf_send(const struct kf_out *o)
{
	if (o->ifindex)
		return bpf_redirect_neigh(o->ifindex, NULL, 0, 0);
	return TC_ACT_OK;
}

#endif
