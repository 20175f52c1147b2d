// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// turnrelay: a tc (TCX ingress) program that relays channel-bound TURN
// traffic of the traverse TURN server (RFC 8656 section 12) below the
// socket layer.
//
// Client -> server: a UDP datagram to the TURN listener whose payload is a
// ChannelData message (channel number, length, data, at most 3 bytes of
// padding) is looked up by {client, listener, channel}; on a hit it becomes
// the plain UDP datagram the server would send: data only, from the
// allocation's relayed address to the channel's peer.
//
// Peer -> server: a UDP datagram to a relayed address is looked up by
// {peer, relayed address}; on a hit it becomes the ChannelData message the
// server would send: the 4-byte header in front of the data, from the
// listener to the client.
//
// The data moves by 4 bytes through a per-CPU scratch buffer
// (bpf_skb_load_bytes / bpf_skb_store_bytes) and the packet is trimmed or
// grown at its tail (bpf_skb_change_tail), so the UDP header keeps its
// place: a CHECKSUM_PARTIAL packet of a local sender (veth, lo) keeps a
// valid csum_start, which bpf_skb_adjust_room would leave pointing 4 bytes
// off. The UDP checksum is updated incrementally through
// bpf_l4_csum_replace (pseudo-header differences flagged as such, so a
// partial checksum takes only those; a zero checksum stays zero); the IP
// header checksum is recomputed (new length, TTL 64 as the server's own
// sockets send).
//
// A hit is relayed only before the entry's deadline (the earliest expiry of
// the channel, its permission and the allocation, CLOCK_MONOTONIC), and
// counted per CPU. It is then redirected with bpf_redirect_neigh out of
// the entry's interface, or, for an entry without one (the lo case: both
// ends local), handed up the stack, which delivers it locally.
//
// Everything else passes untouched (TC_ACT_UNSPEC): STUN, Send and Data
// indications, unknown channels, expired entries, fragments, IP options,
// truncated or malformed ChannelData, more than 3 bytes after the data,
// GSO packets, results longer than the entry's max_len.
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

#include "../../../bpfinclude/csum.h"

// relay_key: the UDP 4-tuple a packet arrives with (network byte order)
// and, for ChannelData from a client, its channel number (network byte
// order); 0 for a peer's datagram.
struct relay_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__be16 channel;
	__u16 pad;
};

// relay_value: the rewrite. channel is the number to frame a peer's
// datagram with (network byte order); unused for client entries, which
// strip. deadline is CLOCK_MONOTONIC nanoseconds; slot indexes counters.
struct relay_value {
	__u64 deadline;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 ifindex;
	__u32 max_len;
	__u32 slot;
	__be16 channel;
	__u16 pad;
};

struct relay_counters {
	__u64 packets;
	__u64 bytes; // relayed data (payload) bytes, as the server counts them
};

// SCRATCH bounds the data the program moves: larger payloads pass.
#define SCRATCH 2048
#define MAX_DATA 2000

struct scratch {
	__u8 b[SCRATCH];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct relay_key);
	__type(value, struct relay_value);
} relays SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct relay_counters);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

#define IP_OFF ETH_HLEN
#define UDP_OFF (IP_OFF + sizeof(struct iphdr))
#define DATA_OFF (UDP_OFF + sizeof(struct udphdr))
#define UDP_CSUM_OFF (UDP_OFF + __builtin_offsetof(struct udphdr, check))
#define PASS TC_ACT_UNSPEC
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define RELAY_TTL 64

// move copies n bytes (1..MAX_DATA) of the packet from offset from to
// offset to through the scratch buffer.
static __always_inline int move(struct __sk_buff *skb, __u32 from, __u32 to, __u32 n)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return -1;
	if (n < 1 || n > MAX_DATA)
		return -1;
	// Bounds the verifier can follow: clang would merge the two tests
	// above into one that loses the lower bound.
	__u32 m = n - 1;
	asm volatile("" : "+r"(m));
	m &= SCRATCH - 1;
	m += 1;
	if (bpf_skb_load_bytes(skb, from, s->b, m))
		return -1;
	return bpf_skb_store_bytes(skb, to, s->b, m, BPF_F_RECOMPUTE_CSUM);
}

// finish writes the new IP and UDP headers of a rewritten packet of IP
// length tot and sends it on.
static __always_inline int finish(struct __sk_buff *skb, const struct relay_value *v, __u32 tot)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + IP_OFF;
	struct udphdr *udp = data + UDP_OFF;
	if ((void *)(udp + 1) > data_end)
		return TC_ACT_SHOT;
	ip->saddr = v->saddr;
	ip->daddr = v->daddr;
	ip->tot_len = bpf_htons(tot);
	ip->ttl = RELAY_TTL;
	ip->check = 0;
	__u32 s = 0;
	__u16 *w = (__u16 *)ip;
#pragma unroll
	for (int i = 0; i < 10; i++)
		s += w[i];
	ip->check = ~csum_fold(s);
	udp->source = v->sport;
	udp->dest = v->dport;
	udp->len = bpf_htons(tot - sizeof(struct iphdr));
	if (v->ifindex)
		return bpf_redirect_neigh(v->ifindex, NULL, 0, 0);
	return TC_ACT_OK;
}

// count adds one packet of n data bytes to slot.
static __always_inline void count(__u32 slot, __u32 n)
{
	struct relay_counters *c = bpf_map_lookup_elem(&counters, &slot);
	if (c) {
		c->packets++;
		c->bytes += n;
	}
}

// pad_word returns the one's complement contribution, in memory order
// (little-endian: the program is built for bpfel only), of the byte b at
// UDP offset off: the first byte of a 16-bit word is its low byte.
static __always_inline __u32 pad_word(__u8 b, __u32 off)
{
	return (off & 1) ? (__u32)b << 8 : (__u32)b;
}

SEC("tc")
int turn_relay(struct __sk_buff *skb)
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
	__u32 tot = bpf_ntohs(ip->tot_len);
	if (tot < sizeof(struct iphdr) + sizeof(struct udphdr) || tot > skb->len - ETH_HLEN)
		return PASS;
	if (bpf_ntohs(udp->len) != tot - sizeof(struct iphdr))
		return PASS;
	if (skb->gso_size)
		return PASS;
	__u32 plen = tot - sizeof(struct iphdr) - sizeof(struct udphdr);

	struct relay_key k = {
		.saddr = ip->saddr,
		.daddr = ip->daddr,
		.sport = udp->source,
		.dport = udp->dest,
	};
	__be32 old_addrs[2] = {ip->saddr, ip->daddr};
	__u32 old_ports = *(__u32 *)&udp->source;
	__u16 old_ulen = udp->len;
	struct relay_value *v = NULL;
	__u16 cd[2] = {0, 0}; // ChannelData channel and length, network order

	if (plen >= 4) {
		__u8 *p = (void *)(udp + 1);
		if ((void *)(p + 4) > data_end)
			return PASS;
		if ((p[0] & 0xc0) == 0x40) {
			cd[0] = *(__u16 *)p;
			cd[1] = *(__u16 *)(p + 2);
			k.channel = cd[0];
			v = bpf_map_lookup_elem(&relays, &k);
			k.channel = 0;
		}
	}
	if (v) {
		// Client -> peer: strip the header and the padding.
		__u32 n = bpf_ntohs(cd[1]);
		if (4 + n > plen)
			return PASS; // shorter than its length: user space drops it
		__u32 tail = plen - 4 - n;
		if (tail > 3 || n > MAX_DATA)
			return PASS;
		if (bpf_ktime_get_ns() >= v->deadline)
			return PASS;
		__u32 ntot = sizeof(struct iphdr) + sizeof(struct udphdr) + n;
		if (ntot > v->max_len)
			return PASS;
		struct relay_value rv = *v;
		// The checksum differences (RFC 1624), in memory order.
		__u16 new_ulen = bpf_htons(ntot - sizeof(struct iphdr));
		__u32 ports_new = (__u32)rv.sport | (__u32)rv.dport << 16;
		__u32 pseudo = csum_add(csum_add(csum_add(~old_addrs[0], ~old_addrs[1]), rv.saddr), rv.daddr);
		pseudo = csum_add(csum_add(pseudo, (__u16)~old_ulen), new_ulen);
		__u32 hdr = csum_add(~old_ports, ports_new);
		hdr = csum_add(csum_add(hdr, (__u16)~old_ulen), new_ulen);
		hdr = csum_add(csum_add(hdr, (__u16)~cd[0]), (__u16)~cd[1]);
		if (tail) {
			__u8 padb[3] = {0, 0, 0};
			__u32 off = DATA_OFF + 4 + n;
			if (tail == 1) {
				if (bpf_skb_load_bytes(skb, off, padb, 1))
					return PASS;
			} else if (tail == 2) {
				if (bpf_skb_load_bytes(skb, off, padb, 2))
					return PASS;
			} else {
				if (bpf_skb_load_bytes(skb, off, padb, 3))
					return PASS;
			}
			// Offsets relative to the UDP header give the byte's half
			// of its 16-bit word (the UDP header starts even).
			__u32 uoff = 8 + 4 + n;
			hdr = csum_add(hdr, (__u16)~pad_word(padb[0], uoff));
			hdr = csum_add(hdr, (__u16)~pad_word(padb[1], uoff + 1));
			hdr = csum_add(hdr, (__u16)~pad_word(padb[2], uoff + 2));
		}
		if (n > 0 && move(skb, DATA_OFF + 4, DATA_OFF, n))
			return TC_ACT_SHOT;
		if (bpf_skb_change_tail(skb, ETH_HLEN + ntot, 0))
			return TC_ACT_SHOT;
		bpf_l4_csum_replace(skb, UDP_CSUM_OFF, 0, pseudo, BPF_F_MARK_MANGLED_0 | BPF_F_PSEUDO_HDR);
		bpf_l4_csum_replace(skb, UDP_CSUM_OFF, 0, hdr, BPF_F_MARK_MANGLED_0);
		count(rv.slot, n);
		return finish(skb, &rv, ntot);
	}

	// Peer -> client: frame the datagram as ChannelData.
	v = bpf_map_lookup_elem(&relays, &k);
	if (!v)
		return PASS;
	if (plen > MAX_DATA || plen > 0xffff)
		return PASS;
	__u32 ntot = tot + 4;
	if (ntot > v->max_len)
		return PASS;
	if (bpf_ktime_get_ns() >= v->deadline)
		return PASS;
	struct relay_value rv = *v;
	__u16 hdrw[2] = {rv.channel, bpf_htons(plen)};
	__u16 new_ulen = bpf_htons(ntot - sizeof(struct iphdr));
	__u32 ports_new = (__u32)rv.sport | (__u32)rv.dport << 16;
	__u32 pseudo = csum_add(csum_add(csum_add(~old_addrs[0], ~old_addrs[1]), rv.saddr), rv.daddr);
	pseudo = csum_add(csum_add(pseudo, (__u16)~old_ulen), new_ulen);
	__u32 hdr = csum_add(~old_ports, ports_new);
	hdr = csum_add(csum_add(hdr, (__u16)~old_ulen), new_ulen);
	hdr = csum_add(csum_add(hdr, hdrw[0]), hdrw[1]);
	if (bpf_skb_change_tail(skb, ETH_HLEN + ntot, 0))
		return TC_ACT_SHOT;
	if (plen > 0 && move(skb, DATA_OFF, DATA_OFF + 4, plen))
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, DATA_OFF, hdrw, 4, BPF_F_RECOMPUTE_CSUM))
		return TC_ACT_SHOT;
	bpf_l4_csum_replace(skb, UDP_CSUM_OFF, 0, pseudo, BPF_F_MARK_MANGLED_0 | BPF_F_PSEUDO_HDR);
	bpf_l4_csum_replace(skb, UDP_CSUM_OFF, 0, hdr, BPF_F_MARK_MANGLED_0);
	count(rv.slot, plen);
	return finish(skb, &rv, ntot);
}

char __license[] SEC("license") = "Dual MIT/GPL";
