// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// move.h: moving a packet's payload within the packet through a per-CPU
// scratch buffer, for programs that add or strip a header in front of the
// data (the TURN channel program) without moving the UDP header (which
// would leave a CHECKSUM_PARTIAL packet's csum_start pointing off).
#ifndef TRAVERSE_KFAST_MOVE_H
#define TRAVERSE_KFAST_MOVE_H

#include "kfast.h"

// KF_SCRATCH bounds the data a program moves; KF_MAX_MOVE is the most
// kf_move takes (larger payloads pass to user space).
#define KF_SCRATCH 2048
#define KF_MAX_MOVE 2000

struct kf_scratch {
	__u8 b[KF_SCRATCH];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kf_scratch);
} scratch SEC(".maps");

// kf_move copies n bytes (1..KF_MAX_MOVE) of the packet from offset from
// to offset to through the scratch buffer; non-zero on failure.
static __always_inline int kf_move(struct __sk_buff *skb, __u32 from, __u32 to, __u32 n)
{
	__u32 zero = 0;
	struct kf_scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return -1;
	if (n < 1 || n > KF_MAX_MOVE)
		return -1;
	// Bounds the verifier can follow: clang would merge the two tests
	// above into one that loses the lower bound.
	__u32 m = n - 1;
	asm volatile("" : "+r"(m));
	m &= KF_SCRATCH - 1;
	m += 1;
	if (bpf_skb_load_bytes(skb, from, s->b, m))
		return -1;
	return bpf_skb_store_bytes(skb, to, s->b, m, BPF_F_RECOMPUTE_CSUM);
}

#endif
