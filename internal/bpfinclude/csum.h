// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// One's complement checksum arithmetic (RFC 1071, RFC 1624) shared by the
// tc programs of traverse (internal/mediaproxy/bpfoffload,
// internal/turn/turnoffload). Values are summed as they sit in memory:
// every operand of one sum must be in the same byte order.

#ifndef TRAVERSE_CSUM_H
#define TRAVERSE_CSUM_H

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

#endif
