package netlab

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// BlockUDP drops the UDP datagrams between the node and peer, both ways,
// on the node's eth0 (table netdev "netlab-block"): a firewall that closes
// one path and leaves the others (a TURN server's address) open. Calling
// it again replaces the blocked address; UnblockUDP removes the block.
func (n *Node) BlockUDP(peer netip.Addr) error {
	if !peer.Is4() {
		return fmt.Errorf("netlab: block %s: IPv4 only", peer)
	}
	return n.setBlock(peer)
}

// UnblockUDP removes BlockUDP's rule.
func (n *Node) UnblockUDP() error { return n.setBlock(netip.Addr{}) }

func (n *Node) setBlock(peer netip.Addr) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(n.ns)))
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: "netlab-block", Family: nftables.TableFamilyNetdev}
	c.AddTable(t)
	c.DelTable(t)
	if peer.IsValid() {
		c.AddTable(t)
		ip := peer.As4()
		for _, h := range []struct {
			name string
			hook *nftables.ChainHook
			off  uint32 // 12: source address, 16: destination
		}{{"up", nftables.ChainHookEgress, 16}, {"down", nftables.ChainHookIngress, 12}} {
			ch := c.AddChain(&nftables.Chain{Name: h.name, Table: t, Type: nftables.ChainTypeFilter,
				Hooknum: h.hook, Priority: nftables.ChainPriorityFilter, Device: "eth0"})
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(unix.ETH_P_IP)},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 9, Len: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: h.off, Len: 4},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip[:]},
				&expr.Verdict{Kind: expr.VerdictDrop},
			}})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netlab: block on %s: %w", n.name, err)
	}
	return nil
}
