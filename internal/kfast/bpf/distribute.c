// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// distribute: a tc (TCX ingress) program that serves seed D's distribution
// table below the socket layer (internal/distribute, its kernel path
// internal/kfast/distribution). An RTP packet (RFC 3550 version 2, not
// RTCP: packet types 192-223 pass, RFC 5761 section 4) to a stream's
// address and port, with the stream's SSRC or to the port's stream without
// SSRC, and from the stream's source when it names one, is sent to every
// receiver of the stream: for each, the packet is rewritten (source: the
// stream's address and port, as the user-space path sends; destination:
// the receiver; Ethernet addresses: the route's) and cloned out of the
// receiver's interface (bpf_clone_redirect), except the last receiver,
// which gets the packet itself (bpf_redirect): every receiver gets exactly
// one copy, with one clone per receiver but the last.
//
// Checksums are updated incrementally (RFC 1624, kf_ip_update and
// kf_l4_update), so a partial checksum of a local sender takes only the
// pseudo-header part and a zero UDP checksum stays zero.
//
// Each receiver and each stream has a counter slot of the loader (packets,
// UDP payload bytes) and the time of its last packet (dist_last). The
// table entry is replaced whole by user space (a hash map update swaps the
// element under RCU), so a packet sees either the old list or the new one.
//
// Everything else passes untouched (KF_PASS): RTCP (user space keeps
// receivers alive from it and forwards the sender's reports), other
// traffic, unknown streams, other senders, what kf_parse_udp4 refuses.
//
// Built into the one object of internal/kfast (bpf/kfast.c, gen.go).

#include "../include/kfast.h"

// DIST_MAX_FAN bounds a stream's receivers in the kernel; a larger stream
// stays in user space.
#define DIST_MAX_FAN 64

// dist_key: the stream's address and port and, when has_ssrc, its SSRC
// (network byte order).
struct dist_key {
	__be32 daddr;
	__be16 dport;
	__u16 has_ssrc;
	__be32 ssrc;
};

// dist_rcv: one receiver: o.to is the tuple its copy is sent with (from
// the stream's address and port), o.ifindex its interface, o.slot its
// counter slot; dmac and smac the Ethernet addresses of the route.
struct dist_rcv {
	struct kf_out o;
	__u8 dmac[6];
	__u8 smac[6];
	__u32 pad;
};

// dist_value: the only accepted sender (0: any) and the receivers. slot is
// the stream's counter slot (packets in).
struct dist_value {
	__be32 source;
	__u32 n;
	__u32 slot;
	__u32 pad;
	struct dist_rcv r[DIST_MAX_FAN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct dist_key);
	__type(value, struct dist_value);
} dist_streams SEC(".maps");

// dist_last: CLOCK_MONOTONIC ns of a counter slot's last packet, per CPU.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dist_last SEC(".maps");

static __always_inline void dist_count(__u32 slot, __u32 n, __u64 now)
{
	kf_count(slot, n);
	__u64 *l = bpf_map_lookup_elem(&dist_last, &slot);
	if (l)
		*l = now;
}

SEC("tc")
int distribute(struct __sk_buff *skb)
{
	struct kf_udp4 p;
	if (kf_parse_udp4(skb, &p))
		return KF_PASS;
	__u8 *rtp = (void *)(p.udp + 1);
	if ((void *)(rtp + 12) > p.data_end)
		return KF_PASS;
	if ((rtp[0] >> 6) != 2 || (rtp[1] >= 192 && rtp[1] <= 223))
		return KF_PASS; // not RTP: RTCP and the rest go to user space

	struct dist_key k = {.daddr = p.t.daddr, .dport = p.t.dport, .has_ssrc = 1, .ssrc = *(__be32 *)(rtp + 8)};
	struct dist_value *v = bpf_map_lookup_elem(&dist_streams, &k);
	if (!v) {
		k.has_ssrc = 0;
		k.ssrc = 0;
		v = bpf_map_lookup_elem(&dist_streams, &k);
		if (!v)
			return KF_PASS;
	}
	if (v->source && v->source != p.t.saddr)
		return KF_PASS; // user space drops and counts it
	__u32 n = v->n;
	if (n == 0 || n > DIST_MAX_FAN)
		return KF_PASS;
	__u64 now = bpf_ktime_get_ns();
	dist_count(v->slot, p.plen, now);

	struct kf_tuple cur = p.t;
	for (__u32 i = 0; i < DIST_MAX_FAN; i++) {
		if (i >= n)
			break;
		struct dist_rcv *r = &v->r[i];
		struct kf_tuple to = r->o.to;
		struct udphdr *udp;
		struct iphdr *ip = kf_headers(skb, &udp);
		if (!ip)
			return TC_ACT_SHOT;
		__u32 pseudo = kf_pseudo(&cur, &to);
		kf_ip_update(ip, pseudo);
		kf_l4_update(skb, pseudo, csum_replace32(0, kf_ports(&cur), kf_ports(&to)));
		ip = kf_headers(skb, &udp);
		if (!ip)
			return TC_ACT_SHOT;
		kf_write_tuple(ip, udp, &to);
		// The head is the program's own here (tc's prologue and
		// bpf_clone_redirect unshare it): the MACs are written directly.
		__u8 *eth = (__u8 *)ip - KF_IP_OFF;
		__builtin_memcpy(eth, r->dmac, 6);
		__builtin_memcpy(eth + 6, r->smac, 6);
		cur = to;
		if (i + 1 == n) {
			// The last receiver gets the packet itself: one clone
			// (and one copy of the head) fewer per packet, none for
			// a stream of one receiver.
			dist_count(r->o.slot, p.plen, now);
			return bpf_redirect(r->o.ifindex, 0);
		}
		if (bpf_clone_redirect(skb, r->o.ifindex, 0) == 0)
			dist_count(r->o.slot, p.plen, now);
	}
	return TC_ACT_SHOT;
}
