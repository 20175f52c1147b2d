// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// stunanswer: a tc (TCX ingress) program that answers STUN Binding
// requests (RFC 8489) below the socket layer, as Tailscale's DERP servers
// do with XDP (derp/xdp), for traverse's STUN server (internal/stun,
// `traverse stun --offload ebpf`, Go side internal/kfast/stunanswer).
//
// It answers only what needs no decision: a UDP/IPv4 datagram to one of the
// server's addresses (stun_addrs) that is exactly a Binding request header
// (20 bytes, type 0x0001, magic cookie, length 0) or that header with one
// FINGERPRINT attribute that matches (28 bytes, length 8). No USERNAME,
// MESSAGE-INTEGRITY, CHANGE-REQUEST, RESPONSE-PORT, PADDING or other
// attribute: everything else passes untouched (KF_PASS) to the user-space
// server, which answers it or drops it and counts why.
//
// The answer is written in place, byte for byte what the user-space server
// sends for the same request: a Binding success response with the same
// transaction ID, XOR-MAPPED-ADDRESS (the request's source), for an RFC
// 5780 address RESPONSE-ORIGIN (where the request arrived) and
// OTHER-ADDRESS (from the map), and FINGERPRINT when the request carried
// one (CRC-32 computed here, a table in .rodata, a bounded loop). The
// packet is resized (bpf_skb_change_tail), addresses, ports and Ethernet
// addresses are swapped, the TTL set to 64, both checksums updated
// incrementally (RFC 1624; the UDP one through kf_l4_update, so a partial
// checksum of a local sender and a zero checksum stay right), and it leaves
// through the interface it came in on (bpf_redirect). The address's
// counter slot counts answers and their STUN bytes. Each source address
// gets answers at the endpoint's rate (stun_allow, GCRA); beyond it the
// request passes to user space, whose own per-source limiter drops and
// counts it. A request whose IP
// header checksum is wrong passes (the stack drops it).
//
// Built into the one object of internal/kfast (bpf/kfast.c, gen.go).

#include "../include/kfast.h"

#define STUN_COOKIE 0x2112A442
#define STUN_FP_XOR 0x5354554e

// stun_key: an address the server answers on (addr 0: any address of the
// port, for a server listening on 0.0.0.0).
struct stun_key {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

// stun_value: its counter slot, when rfc5780 is set the OTHER-ADDRESS its
// answers carry (RFC 5780 section 6.1), and the answer rate per source
// (GCRA: interval ns between answers, tolerance ns of burst; interval 0:
// no limit).
struct stun_value {
	__u32 slot;
	__u32 rfc5780;
	__be32 other_addr;
	__be16 other_port;
	__u16 pad;
	__u64 interval;
	__u64 tolerance;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4);
	__type(key, struct stun_key);
	__type(value, struct stun_value);
} stun_addrs SEC(".maps");

// stun_rate: each source address's theoretical arrival time (GCRA), least
// recently used evicted: spoofed sources cannot grow it, and a victim's
// entry, hit by every spoofed request, stays.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1);
	__type(key, __be32);
	__type(value, __u64);
} stun_rate SEC(".maps");

// stun_allow takes one answer from src's budget; 0 when over it.
static __always_inline int stun_allow(__be32 src, __u64 interval, __u64 tolerance)
{
	if (!interval)
		return 1;
	__u64 now = bpf_ktime_get_ns();
	__u64 *tat = bpf_map_lookup_elem(&stun_rate, &src);
	__u64 t = tat ? *tat : now;
	if (t < now)
		t = now;
	if (t - now > tolerance)
		return 0;
	t += interval;
	if (tat)
		*tat = t;
	else
		bpf_map_update_elem(&stun_rate, &src, &t, BPF_ANY);
	return 1;
}

// stun_crc_table: CRC-32 (IEEE 802.3, reflected, polynomial 0xedb88320).
static const __u32 stun_crc_table[256] = {
#define C1(c) (((c) & 1) ? (((c) >> 1) ^ 0xedb88320u) : ((c) >> 1))
#define C8(c) C1(C1(C1(C1(C1(C1(C1(C1(c))))))))
#define R4(i) C8(i), C8(i + 1), C8(i + 2), C8(i + 3)
#define R16(i) R4(i), R4(i + 4), R4(i + 8), R4(i + 12)
#define R64(i) R16(i), R16(i + 16), R16(i + 32), R16(i + 48)
	R64(0u), R64(64u), R64(128u), R64(192u)
#undef R64
#undef R16
#undef R4
#undef C8
#undef C1
};

// stun_crc is CRC-32 of b[0:n] (n at most 56).
static __always_inline __u32 stun_crc(const __u8 *b, __u32 n)
{
	__u32 c = 0xffffffff;
	for (__u32 i = 0; i < 56; i++) {
		if (i >= n)
			break;
		c = stun_crc_table[(c ^ b[i]) & 0xff] ^ (c >> 8);
	}
	return ~c;
}

// stun_addr writes an IPv4 address attribute of type t (network order) at
// b: family 1, port and address as given (already XORed for
// XOR-MAPPED-ADDRESS).
static __always_inline void stun_addr(__u8 *b, __u16 t, __be16 port, __be32 addr)
{
	*(__be16 *)b = bpf_htons(t);
	*(__be16 *)(b + 2) = bpf_htons(8);
	b[4] = 0;
	b[5] = 1;
	*(__be16 *)(b + 6) = port;
	*(__be32 *)(b + 8) = addr;
}

SEC("tc")
int stunanswer(struct __sk_buff *skb)
{
	struct kf_udp4 p;
	if (kf_parse_udp4(skb, &p))
		return KF_PASS;
	if (p.plen != 20 && p.plen != 28)
		return KF_PASS;
	// A corrupt IP header (the stack would drop it) is not answered: its
	// source may be anyone's.
	__u32 *w = (__u32 *)p.ip;
	if (csum_fold(csum_add(csum_add(csum_add(csum_add(w[0], w[1]), w[2]), w[3]), w[4])) != 0xffff)
		return KF_PASS;
	struct stun_key k = {.addr = p.t.daddr, .port = p.t.dport};
	struct stun_value *v = bpf_map_lookup_elem(&stun_addrs, &k);
	if (!v) {
		k.addr = 0;
		v = bpf_map_lookup_elem(&stun_addrs, &k);
		if (!v)
			return KF_PASS;
	}
	__u32 slot = v->slot, rfc5780 = v->rfc5780;
	__u64 interval = v->interval, tolerance = v->tolerance;
	__be32 other_addr = v->other_addr;
	__be16 other_port = v->other_port;

	__u8 req[28] = {};
	int fp = p.plen == 28;
	if (bpf_skb_load_bytes(skb, KF_DATA_OFF, req, 20))
		return KF_PASS;
	if (fp && bpf_skb_load_bytes(skb, KF_DATA_OFF + 20, req + 20, 8))
		return KF_PASS;
	if (*(__be16 *)req != bpf_htons(0x0001) || *(__be16 *)(req + 2) != bpf_htons(p.plen - 20) ||
	    *(__be32 *)(req + 4) != bpf_htonl(STUN_COOKIE))
		return KF_PASS; // not a Binding request, or attributes: user space
	if (fp) {
		if (*(__be16 *)(req + 20) != bpf_htons(0x8028) || *(__be16 *)(req + 22) != bpf_htons(4))
			return KF_PASS; // another attribute
		if (*(__be32 *)(req + 24) != bpf_htonl(stun_crc(req, 20) ^ STUN_FP_XOR))
			return KF_PASS; // user space drops it and counts bad_fingerprint
	}
	if (!stun_allow(p.t.saddr, interval, tolerance))
		return KF_PASS; // over the source's rate: user space's limiter decides and counts

	// The answer, as internal/stun's handler writes it.
	__u8 r[64] = {};
	__u32 n = 32 + (rfc5780 ? 24 : 0) + (fp ? 8 : 0);
	*(__be16 *)r = bpf_htons(0x0101);
	*(__be16 *)(r + 2) = bpf_htons(n - 20);
	__builtin_memcpy(r + 4, req + 4, 16); // cookie and transaction ID
	stun_addr(r + 20, 0x0020, p.t.sport ^ bpf_htons(STUN_COOKIE >> 16), p.t.saddr ^ bpf_htonl(STUN_COOKIE));
	if (rfc5780) {
		stun_addr(r + 32, 0x802b, p.t.dport, p.t.daddr);  // RESPONSE-ORIGIN
		stun_addr(r + 44, 0x802c, other_port, other_addr); // OTHER-ADDRESS
	}
	if (fp) {
		__u32 at = rfc5780 ? 56 : 32;
		__u32 crc = stun_crc(r, at) ^ STUN_FP_XOR;
		if (rfc5780) {
			*(__be32 *)(r + 56) = bpf_htonl(0x80280004);
			*(__be32 *)(r + 60) = bpf_htonl(crc);
		} else {
			*(__be32 *)(r + 32) = bpf_htonl(0x80280004);
			*(__be32 *)(r + 36) = bpf_htonl(crc);
		}
	}

	// Checksum differences: swapping addresses and ports changes no sum;
	// the lengths (UDP: pseudo-header and header; IP: total length), the
	// TTL and the payload do.
	__u16 ulen_old = bpf_htons(8 + p.plen), ulen_new = bpf_htons(8 + n);
	__u32 pseudo = csum_replace16(0, ulen_old, ulen_new);
	__u32 body = bpf_csum_diff((__be32 *)req, fp ? 28 : 20, (__be32 *)r, n, csum_replace16(0, ulen_old, ulen_new));
	__u16 ttl_old = *(__u16 *)&p.ip->ttl; // TTL and protocol
	__u16 ttl_new = ttl_old;
	((__u8 *)&ttl_new)[0] = 64;
	__u32 ipd = csum_replace16(csum_replace16(0, p.ip->tot_len, bpf_htons(28 + n)), ttl_old, ttl_new);

	if (skb->len != ETH_HLEN + 28 + n && bpf_skb_change_tail(skb, ETH_HLEN + 28 + n, 0))
		return KF_PASS; // untouched so far
	kf_l4_update(skb, pseudo, body);
	if (bpf_skb_store_bytes(skb, KF_DATA_OFF, r, n, 0))
		return TC_ACT_SHOT;

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end)
		return TC_ACT_SHOT;
	__u8 mac[6];
	__builtin_memcpy(mac, eth->h_dest, 6);
	__builtin_memcpy(eth->h_dest, eth->h_source, 6);
	__builtin_memcpy(eth->h_source, mac, 6);
	kf_ip_update(ip, ipd);
	ip->tot_len = bpf_htons(28 + n);
	ip->ttl = 64;
	ip->saddr = p.t.daddr;
	ip->daddr = p.t.saddr;
	udp->len = ulen_new;
	udp->source = p.t.dport;
	udp->dest = p.t.sport;
	kf_count(slot, n);
	return bpf_redirect(skb->ifindex, 0);
}
