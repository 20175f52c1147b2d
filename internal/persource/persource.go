// Package persource holds what every per-source limit of traverse shares:
// what one source is (Key: an IPv4 address, an IPv6 /64), a rate limit per
// source that a spoofed flood cannot grow (Rate), and a count per source of
// what a source holds open (Counts: connections, streams).
//
// It is one package apart from connlimit because its users are not all
// listeners: STUN and TURN answers and SIP requests are datagrams, rate
// limited on the read path of every socket; connlimit's Listener counts its
// connections with Counts.
package persource

import "net/netip"

// IPv6Prefix is the prefix length by which IPv6 sources count as one: one
// subscriber usually holds a whole /64, so counting single IPv6 addresses
// would give it 2^64 shares.
const IPv6Prefix = 64

// Key is the source a limit counts a by: the address itself for IPv4
// (IPv4-mapped IPv6 unmapped), its /64 for IPv6 (zone dropped). An invalid
// address maps to the zero prefix, which all such sources share.
func Key(a netip.Addr) netip.Prefix {
	if !a.IsValid() {
		return netip.Prefix{}
	}
	a = a.Unmap()
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.WithZone("").Prefix(IPv6Prefix)
	return p
}

// Counts counts what each source holds open (connections, streams), for a
// cap per source. It has no lock of its own: its owner guards it with the
// mutex that also guards its total (every user caps a total too). The
// zero value is ready to use. Entries live while their count is positive,
// so the table is bounded by what the owner's total cap lets be open.
type Counts struct {
	m map[netip.Prefix]int
}

// Take adds n to k's count, unless that would take it past limit (limit
// <= 0: no cap); it reports whether it did.
func (c *Counts) Take(k netip.Prefix, n, limit int) bool {
	if limit > 0 && c.m[k]+n > limit {
		return false
	}
	if c.m == nil {
		c.m = map[netip.Prefix]int{}
	}
	c.m[k] += n
	return true
}

// Give takes n back from k's count.
func (c *Counts) Give(k netip.Prefix, n int) {
	if v := c.m[k] - n; v > 0 {
		c.m[k] = v
	} else {
		delete(c.m, k)
	}
}

// Get returns k's count.
func (c *Counts) Get(k netip.Prefix) int { return c.m[k] }

// Len returns the number of sources with a positive count.
func (c *Counts) Len() int { return len(c.m) }
