// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// One's complement checksum arithmetic (RFC 1071, RFC 1624) for the tc
// programs of traverse (internal/kfast). Values are summed as they sit in
// memory: every operand of one sum must be in the same byte order.
#ifndef TRAVERSE_KFAST_CSUM_H
#define TRAVERSE_KFAST_CSUM_H

#include <linux/types.h>

// csum_add adds v to the 32-bit one's complement sum s (end-around carry).
static __always_inline __u32 csum_add(__u32 s, __u32 v)
{
	s += v;
	return s + (s < v);
}

// csum_fold folds a 32-bit sum into 16 bits (not complemented).
static __always_inline __u16 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

// csum_replace16 is the difference (RFC 1624: ~old + new) of a 16-bit word
// replaced, added to s.
static __always_inline __u32 csum_replace16(__u32 s, __u16 old, __u16 new)
{
	return csum_add(csum_add(s, (__u16)~old), new);
}

// csum_replace32 is csum_replace16 for a 32-bit word (two 16-bit words:
// the end-around carry makes the 32-bit sum fold to the same value).
static __always_inline __u32 csum_replace32(__u32 s, __u32 old, __u32 new)
{
	return csum_add(csum_add(s, ~old), new);
}

#endif
