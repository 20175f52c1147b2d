package netlab

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// BalanceUDP makes the NAT an L4 UDP load balancer: datagrams arriving on
// its outside (eth0) for its public address and port are sent, flow by flow,
// to one of backends (hosts on its private side) at the same port, chosen by
// the kernel's Jenkins hash of the client's source address and port with
// seed, as
//
//	nft add rule ip netlab-lb pre iifname eth0 ip daddr PUBLIC udp dport PORT \
//	    dnat to jhash ip saddr . udp sport mod N seed SEED map { 0 : B0, 1 : B1, ... }
//
// does (here one rule per backend, the hash compared with its index).
// Conntrack keeps a flow on its backend and turns the backends' replies back
// into the public address. Backend tells which backend a source goes to.
func (n *NAT) BalanceUDP(port uint16, backends []netip.Addr, seed uint32) error {
	if len(backends) == 0 {
		return errors.New("netlab: balance: no backends")
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(n.ns)))
	if err != nil {
		return err
	}
	pub := n.Addr().As4()
	t := c.AddTable(&nftables.Table{Name: "netlab-lb", Family: nftables.TableFamilyIPv4})
	pre := c.AddChain(&nftables.Chain{Name: "pre", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting,
		Priority: nftables.ChainPriorityRef(*nftables.ChainPriorityNATDest - 1)})
	for i, b := range backends {
		if !b.Is4() {
			return errors.New("netlab: balance: IPv4 backends only")
		}
		addr := b.As4()
		c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: cat(
			ifname(unix.NFT_META_IIFNAME, "eth0"),
			[]expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}, // daddr
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: pub[:]},
			},
			l4proto(unix.IPPROTO_UDP),
			[]expr.Any{
				udpPort(1, 2),
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(port)},
				// ip saddr . udp sport into two 32-bit registers (the
				// port zero-padded), then jhash of those 8 bytes.
				&expr.Payload{DestRegister: 8, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
				&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
				&expr.Hash{SourceRegister: 8, DestRegister: 1, Length: 8, Modulus: uint32(len(backends)), Seed: seed,
					Type: expr.HashTypeJenkins},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, uint32(i))},
				&expr.Immediate{Register: 1, Data: addr[:]},
				&expr.Immediate{Register: 2, Data: be16(port)},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
			})})
	}
	return c.Flush()
}

// Backend is the index of the backend BalanceUDP sends src's flow to, among
// n backends with seed: the kernel's jhash (include/linux/jhash.h) of the
// source address and zero-padded port, scaled to n (reciprocal_scale).
func Backend(src netip.AddrPort, n int, seed uint32) int {
	var k [8]byte
	a := src.Addr().As4()
	copy(k[:4], a[:])
	binary.BigEndian.PutUint16(k[4:], src.Port())
	h := jhash8(k, seed)
	return int((uint64(h) * uint64(n)) >> 32)
}

// jhash8 is the kernel's jhash() of an 8-byte key.
func jhash8(k [8]byte, seed uint32) uint32 {
	a := 0xdeadbeef + uint32(8) + seed
	b, c := a, a
	b += uint32(k[7])<<24 | uint32(k[6])<<16 | uint32(k[5])<<8 | uint32(k[4])
	a += uint32(k[3])<<24 | uint32(k[2])<<16 | uint32(k[1])<<8 | uint32(k[0])
	// __jhash_final
	c ^= b
	c -= bits.RotateLeft32(b, 14)
	a ^= c
	a -= bits.RotateLeft32(c, 11)
	b ^= a
	b -= bits.RotateLeft32(a, 25)
	c ^= b
	c -= bits.RotateLeft32(b, 16)
	a ^= c
	a -= bits.RotateLeft32(c, 4)
	b ^= a
	b -= bits.RotateLeft32(a, 14)
	c ^= b
	c -= bits.RotateLeft32(b, 24)
	return c
}
