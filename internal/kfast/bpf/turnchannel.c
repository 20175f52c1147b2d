// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// turnchannel: a tc (TCX ingress) program that relays channel-bound TURN
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
// The data moves by 4 bytes (kf_move, include/move.h) and the packet is
// trimmed or grown at its tail (bpf_skb_change_tail), so the UDP header
// keeps its place: a CHECKSUM_PARTIAL packet of a local sender (veth, lo)
// keeps a valid csum_start, which bpf_skb_adjust_room would leave pointing
// 4 bytes off. The UDP checksum is updated incrementally through
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
// Built into the one object of internal/kfast (bpf/kfast.c, gen.go).

#include "../include/move.h"

// relay_key: the UDP 4-tuple a packet arrives with and, for ChannelData
// from a client, its channel number (network byte order); 0 for a peer's
// datagram.
struct relay_key {
	struct kf_tuple t;
	__be16 channel;
	__u16 pad;
};

// relay_value: where a hit goes and, for a peer's datagram, the channel
// number to frame it with (network byte order; unused for client entries,
// which strip).
struct relay_value {
	struct kf_out out;
	__be16 channel;
	__u16 pad;
	__u32 pad2;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct relay_key);
	__type(value, struct relay_value);
} relays SEC(".maps");

#define RELAY_TTL 64

// finish writes the new IP and UDP headers of a rewritten packet of IP
// length tot and sends it on.
static __always_inline int finish(struct __sk_buff *skb, const struct kf_out *o, __u32 tot)
{
	struct udphdr *udp;
	struct iphdr *ip = kf_headers(skb, &udp);
	if (!ip)
		return TC_ACT_SHOT;
	kf_write_tuple(ip, udp, &o->to);
	ip->tot_len = bpf_htons(tot);
	ip->ttl = RELAY_TTL;
	ip->check = 0;
	__u32 s = 0;
	__u16 *w = (__u16 *)ip;
#pragma unroll
	for (int i = 0; i < 10; i++)
		s += w[i];
	ip->check = ~csum_fold(s);
	udp->len = bpf_htons(tot - sizeof(struct iphdr));
	return kf_send(o);
}

// pad_word returns the one's complement contribution, in memory order
// (little-endian: the program is built for bpfel only), of the byte b at
// UDP offset off: the first byte of a 16-bit word is its low byte.
static __always_inline __u32 pad_word(__u8 b, __u32 off)
{
	return (off & 1) ? (__u32)b << 8 : (__u32)b;
}

// resize_diffs returns in pseudo and hdr the checksum differences (RFC
// 1624, memory order) of rewriting p to o.to with IP length ntot: the
// pseudo-header (addresses and UDP length) and the UDP header (ports and
// length); the payload's own change is the caller's.
static __always_inline void resize_diffs(const struct kf_udp4 *p, const struct kf_out *o, __u32 ntot, __u32 *pseudo, __u32 *hdr)
{
	__u16 old_ulen = p->udp->len;
	__u16 new_ulen = bpf_htons(ntot - sizeof(struct iphdr));
	*pseudo = csum_replace16(kf_pseudo(&p->t, &o->to), old_ulen, new_ulen);
	*hdr = csum_replace16(csum_replace32(0, kf_ports(&p->t), kf_ports(&o->to)), old_ulen, new_ulen);
}

// strip turns the client's ChannelData message (channel and length cd, in
// network order) into the plain datagram to the peer.
static __always_inline int strip(struct __sk_buff *skb, struct kf_udp4 *p, const struct relay_value *v, __u16 cd[2])
{
	__u32 n = bpf_ntohs(cd[1]);
	if (4 + n > p->plen)
		return KF_PASS; // shorter than its length: user space drops it
	__u32 tail = p->plen - 4 - n;
	if (tail > 3 || n > KF_MAX_MOVE)
		return KF_PASS;
	if (!kf_live(v->out.deadline))
		return KF_PASS;
	__u32 ntot = KF_HDRS + n;
	if (ntot > v->out.max_len)
		return KF_PASS;
	struct kf_out o = v->out;
	__u32 pseudo, hdr;
	resize_diffs(p, &o, ntot, &pseudo, &hdr);
	hdr = csum_add(csum_add(hdr, (__u16)~cd[0]), (__u16)~cd[1]);
	if (tail) {
		__u8 padb[3] = {0, 0, 0};
		__u32 off = KF_DATA_OFF + 4 + n;
		if (tail == 1) {
			if (bpf_skb_load_bytes(skb, off, padb, 1))
				return KF_PASS;
		} else if (tail == 2) {
			if (bpf_skb_load_bytes(skb, off, padb, 2))
				return KF_PASS;
		} else {
			if (bpf_skb_load_bytes(skb, off, padb, 3))
				return KF_PASS;
		}
		// Offsets relative to the UDP header give the byte's half of
		// its 16-bit word (the UDP header starts even).
		__u32 uoff = 8 + 4 + n;
		hdr = csum_add(hdr, (__u16)~pad_word(padb[0], uoff));
		hdr = csum_add(hdr, (__u16)~pad_word(padb[1], uoff + 1));
		hdr = csum_add(hdr, (__u16)~pad_word(padb[2], uoff + 2));
	}
	if (n > 0 && kf_move(skb, KF_DATA_OFF + 4, KF_DATA_OFF, n))
		return TC_ACT_SHOT;
	if (bpf_skb_change_tail(skb, ETH_HLEN + ntot, 0))
		return TC_ACT_SHOT;
	kf_l4_update(skb, pseudo, hdr);
	kf_count(o.slot, n);
	return finish(skb, &o, ntot);
}

// frame turns the peer's datagram into the ChannelData message to the
// client.
static __always_inline int frame(struct __sk_buff *skb, struct kf_udp4 *p, const struct relay_value *v)
{
	__u32 plen = p->plen;
	if (plen > KF_MAX_MOVE)
		return KF_PASS;
	__u32 ntot = p->tot + 4;
	if (ntot > v->out.max_len)
		return KF_PASS;
	if (!kf_live(v->out.deadline))
		return KF_PASS;
	struct kf_out o = v->out;
	__u16 hdrw[2] = {v->channel, bpf_htons(plen)};
	__u32 pseudo, hdr;
	resize_diffs(p, &o, ntot, &pseudo, &hdr);
	hdr = csum_add(csum_add(hdr, hdrw[0]), hdrw[1]);
	if (bpf_skb_change_tail(skb, ETH_HLEN + ntot, 0))
		return TC_ACT_SHOT;
	if (plen > 0 && kf_move(skb, KF_DATA_OFF, KF_DATA_OFF + 4, plen))
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, KF_DATA_OFF, hdrw, 4, BPF_F_RECOMPUTE_CSUM))
		return TC_ACT_SHOT;
	kf_l4_update(skb, pseudo, hdr);
	kf_count(o.slot, plen);
	return finish(skb, &o, ntot);
}

SEC("tc")
int turnchannel(struct __sk_buff *skb)
{
	struct kf_udp4 p;
	if (kf_parse_udp4(skb, &p))
		return KF_PASS;
	struct relay_key k = {.t = p.t};
	if (p.plen >= 4) {
		__u8 *d = (void *)(p.udp + 1);
		if ((void *)(d + 4) > p.data_end)
			return KF_PASS;
		if ((d[0] & 0xc0) == 0x40) {
			__u16 cd[2] = {*(__u16 *)d, *(__u16 *)(d + 2)};
			k.channel = cd[0];
			struct relay_value *v = bpf_map_lookup_elem(&relays, &k);
			if (v)
				return strip(skb, &p, v, cd);
			k.channel = 0;
		}
	}
	struct relay_value *v = bpf_map_lookup_elem(&relays, &k);
	if (!v)
		return KF_PASS;
	return frame(skb, &p, v);
}
