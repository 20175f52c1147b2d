// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// distribute: a tc (TCX ingress) program that serves seed D's distribution
// table below the socket layer (internal/distribute). An RTP packet (RFC
// 3550 version 2, not RTCP: packet types 192-223 pass, RFC 5761 section 4)
// to a stream's address and port, with the stream's SSRC or to the port's
// stream without SSRC, and from the stream's source when it names one, is
// sent to every receiver of the stream: for each, the packet is rewritten
// (source: the stream's address and port, as the user-space path sends;
// destination: the receiver; Ethernet addresses: the route's) and cloned
// out of the receiver's interface with bpf_clone_redirect. The original
// is then dropped: every receiver got exactly one copy.
//
// Checksums are updated incrementally (RFC 1624) with bpf_l3_csum_replace
// and bpf_l4_csum_replace, the pseudo-header changes flagged as such, so a
// partial checksum of a local sender takes only those; a zero UDP checksum
// stays zero.
//
// Each receiver has a counter slot (per-CPU packets and bytes). The table
// entry is replaced whole by user space (a hash map update swaps the
// element under RCU), so a packet sees either the old list or the new one.
//
// Everything else passes untouched (TC_ACT_UNSPEC): RTCP (user space
// keeps receivers alive from it and forwards the sender's reports), other
// traffic, unknown streams, other senders, IP options, fragments, GSO
// packets.
//
// Regenerate with `go generate` in the package directory (see gen.go).

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// MAX_FAN bounds a stream's receivers in the kernel; a larger stream
// stays in user space.
#define MAX_FAN 64

// dist_key: the stream's address and port and, when has_ssrc, its SSRC
// (network byte order).
struct dist_key {
	__be32 daddr;
	__be16 dport;
	__u16 has_ssrc;
	__be32 ssrc;
};

struct dist_rcv {
	__be32 addr;
	__be16 port;
	__u16 pad;
	__u32 ifindex;
	__u32 slot;
	__u8 dmac[6];
	__u8 smac[6];
};

// dist_value: the only accepted sender (0: any) and the receivers.
// slot is the stream's counter slot (packets in).
struct dist_value {
	__be32 source;
	__u32 n;
	__u32 slot;
	__u32 pad;
	struct dist_rcv r[MAX_FAN];
};

struct dist_counters {
	__u64 packets;
	__u64 bytes; // UDP payload bytes, as the user-space path counts them
	__u64 last;  // CLOCK_MONOTONIC ns of the last packet
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct dist_key);
	__type(value, struct dist_value);
} streams SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct dist_counters);
} counters SEC(".maps");

#define IP_OFF ETH_HLEN
#define UDP_OFF (IP_OFF + sizeof(struct iphdr))
#define RTP_OFF (UDP_OFF + sizeof(struct udphdr))
#define IP_CSUM_OFF (IP_OFF + __builtin_offsetof(struct iphdr, check))
#define IP_SADDR_OFF (IP_OFF + __builtin_offsetof(struct iphdr, saddr))
#define IP_DADDR_OFF (IP_OFF + __builtin_offsetof(struct iphdr, daddr))
#define UDP_SPORT_OFF (UDP_OFF + __builtin_offsetof(struct udphdr, source))
#define UDP_DPORT_OFF (UDP_OFF + __builtin_offsetof(struct udphdr, dest))
#define UDP_CSUM_OFF (UDP_OFF + __builtin_offsetof(struct udphdr, check))
#define PASS TC_ACT_UNSPEC
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

static __always_inline void count(__u32 slot, __u32 n, __u64 now)
{
	struct dist_counters *c = bpf_map_lookup_elem(&counters, &slot);
	if (c) {
		c->packets++;
		c->bytes += n;
		c->last = now;
	}
}

// set4 writes a 4-byte address at off and updates the IP checksum and the
// UDP checksum's pseudo-header.
static __always_inline int set4(struct __sk_buff *skb, __u32 off, __be32 old, __be32 new, int mangled)
{
	if (old == new)
		return 0;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old, new, 4))
		return -1;
	if (bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old, new, BPF_F_PSEUDO_HDR | mangled | 4))
		return -1;
	return bpf_skb_store_bytes(skb, off, &new, 4, 0);
}

// set2 writes a port at off and updates the UDP checksum.
static __always_inline int set2(struct __sk_buff *skb, __u32 off, __be16 old, __be16 new, int mangled)
{
	if (old == new)
		return 0;
	if (bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old, new, mangled | 2))
		return -1;
	return bpf_skb_store_bytes(skb, off, &new, 2, 0);
}

SEC("tc")
int distribute(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u8 *rtp = (void *)(udp + 1);

	if ((void *)(rtp + 12) > data_end)
		return PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PASS;
	if (ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return PASS;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return PASS;
	if (skb->gso_size)
		return PASS;
	__u32 tot = bpf_ntohs(ip->tot_len);
	if (tot > skb->len - ETH_HLEN || bpf_ntohs(udp->len) != tot - sizeof(struct iphdr))
		return PASS;
	if ((rtp[0] >> 6) != 2 || (rtp[1] >= 192 && rtp[1] <= 223))
		return PASS; // not RTP: RTCP and the rest go to user space

	struct dist_key k = {.daddr = ip->daddr, .dport = udp->dest, .has_ssrc = 1, .ssrc = *(__be32 *)(rtp + 8)};
	struct dist_value *v = bpf_map_lookup_elem(&streams, &k);
	if (!v) {
		k.has_ssrc = 0;
		k.ssrc = 0;
		v = bpf_map_lookup_elem(&streams, &k);
		if (!v)
			return PASS;
	}
	if (v->source && v->source != ip->saddr)
		return PASS; // user space drops and counts it
	__u32 n = v->n;
	if (n == 0 || n > MAX_FAN)
		return PASS;
	int mangled = udp->check ? 0 : BPF_F_MARK_MANGLED_0;
	__u32 payload = tot - sizeof(struct iphdr) - sizeof(struct udphdr);
	__u64 now = bpf_ktime_get_ns();
	count(v->slot, payload, now);
	__be32 saddr = ip->saddr, daddr = ip->daddr;
	__be16 sport = udp->source, dport = udp->dest;

	// From the stream's address and port, as the user-space path sends.
	if (set4(skb, IP_SADDR_OFF, saddr, daddr, mangled) || set2(skb, UDP_SPORT_OFF, sport, dport, mangled))
		return TC_ACT_SHOT;
	__be32 cur_addr = daddr;
	__be16 cur_port = dport;
	for (__u32 i = 0; i < MAX_FAN; i++) {
		if (i >= n)
			break;
		struct dist_rcv *r = &v->r[i];
		__be32 a = r->addr;
		__be16 p = r->port;
		if (set4(skb, IP_DADDR_OFF, cur_addr, a, mangled) || set2(skb, UDP_DPORT_OFF, cur_port, p, mangled))
			return TC_ACT_SHOT;
		cur_addr = a;
		cur_port = p;
		if (bpf_skb_store_bytes(skb, 0, r->dmac, 6, 0) || bpf_skb_store_bytes(skb, 6, r->smac, 6, 0))
			return TC_ACT_SHOT;
		if (bpf_clone_redirect(skb, r->ifindex, 0) == 0)
			count(r->slot, payload, now);
	}
	return TC_ACT_SHOT;
}

char __license[] SEC("license") = "Dual MIT/GPL";
