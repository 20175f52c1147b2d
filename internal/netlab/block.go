package netlab

import (
	"fmt"
	"math"
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
	return n.setPeerRule("netlab-block", peer, []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}})
}

// UnblockUDP removes BlockUDP's block.
func (n *Node) UnblockUDP() error { return n.setPeerRule("netlab-block", netip.Addr{}, nil) }

// LoseUDP drops pct percent (0-100, to 0.01) of the UDP datagrams between
// the node and peer, both ways, independently and at random (table netdev
// "netlab-udploss", "numgen random" as Link.SetLoss): one path of the
// node's lossy, the others clean. Calling it again replaces the peer and
// the rate; pct 0 removes the loss. It is independent of BlockUDP.
func (n *Node) LoseUDP(peer netip.Addr, pct float64) error {
	if pct < 0 || pct > 100 || math.IsNaN(pct) {
		return fmt.Errorf("netlab: loss %v%% out of range", pct)
	}
	if pct == 0 {
		return n.setPeerRule("netlab-udploss", netip.Addr{}, nil)
	}
	if !peer.Is4() {
		return fmt.Errorf("netlab: loss to %s: IPv4 only", peer)
	}
	return n.setPeerRule("netlab-udploss", peer, lossExprs(pct))
}

// setPeerRule replaces table netdev name with one rule per direction on
// eth0: UDP to (egress) or from (ingress) peer gets action. An invalid
// peer removes the table.
func (n *Node) setPeerRule(name string, peer netip.Addr, action []expr.Any) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(n.ns)))
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyNetdev}
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
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: append([]expr.Any{
				&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(unix.ETH_P_IP)},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 9, Len: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: h.off, Len: 4},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip[:]},
			}, action...)})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netlab: %s on %s: %w", name, n.name, err)
	}
	return nil
}
