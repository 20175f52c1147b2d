package netlab

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Direction picks one way of a link.
type Direction int

const (
	// Both is both ways.
	Both Direction = iota
	// Uplink is from the node towards its network (what the node sends).
	Uplink
	// Downlink is from the network towards the node (what the node receives).
	Downlink
)

// Link is the veth pair joining a node ("eth0" in the node) to its network's
// bridge (a port "vN" in the gateway's namespace).
type Link struct {
	node *Node
	gw   *Node
	peer string // name of the gateway's end

	mu   sync.Mutex // guards loss and the nftables table
	loss [3]float64 // by Direction (Uplink, Downlink used)
}

// Peer is the name of the link's end in the gateway's namespace.
func (l *Link) Peer() string { return l.peer }

// SetLoss makes the link drop pct percent (0-100, to 0.01) of the packets
// going both ways, independently and at random (an nftables "numgen random"
// rule on the node's eth0). 0 removes the loss.
func (l *Link) SetLoss(pct float64) error { return l.SetLossDir(Both, pct) }

// SetLossDir is SetLoss for one direction.
func (l *Link) SetLossDir(d Direction, pct float64) error {
	if pct < 0 || pct > 100 || math.IsNaN(pct) {
		return fmt.Errorf("netlab: loss %v%% out of range", pct)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if d == Both || d == Uplink {
		l.loss[Uplink] = pct
	}
	if d == Both || d == Downlink {
		l.loss[Downlink] = pct
	}
	return l.applyLossLocked()
}

// applyLossLocked rewrites table netdev "netlab-link" in the node: an
// egress chain (Uplink) and an ingress chain (Downlink) on eth0.
func (l *Link) applyLossLocked() error {
	c, err := nftables.New(nftables.WithNetNSFd(int(l.node.ns)))
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: "netlab-link", Family: nftables.TableFamilyNetdev}
	// Delete and re-create in one transaction (add first so that the
	// delete never fails on a missing table).
	c.AddTable(t)
	c.DelTable(t)
	if l.loss[Uplink] > 0 || l.loss[Downlink] > 0 {
		c.AddTable(t)
		for _, h := range []struct {
			d    Direction
			hook *nftables.ChainHook
			name string
		}{{Uplink, nftables.ChainHookEgress, "up"}, {Downlink, nftables.ChainHookIngress, "down"}} {
			if l.loss[h.d] == 0 {
				continue
			}
			ch := c.AddChain(&nftables.Chain{
				Name: h.name, Table: t, Type: nftables.ChainTypeFilter,
				Hooknum: h.hook, Priority: nftables.ChainPriorityFilter, Device: "eth0",
			})
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: lossExprs(l.loss[h.d])})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netlab: loss on %s: %w", l.node.name, err)
	}
	return nil
}

// lossExprs is "numgen random mod 10000 < pct*100 drop".
func lossExprs(pct float64) []expr.Any {
	thr := uint32(math.Round(pct * 100))
	var be [4]byte
	binary.BigEndian.PutUint32(be[:], thr)
	return []expr.Any{
		&expr.Numgen{Register: 1, Modulus: 10000, Type: unix.NFT_NG_RANDOM},
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 4, Size: 4},
		&expr.Cmp{Op: expr.CmpOpLt, Register: 1, Data: be[:]},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// SetRate caps the link at bps bits per second both ways (a tbf qdisc on
// each end, queueing about 100 ms before dropping). 0 removes the cap.
func (l *Link) SetRate(bps uint64) error { return l.SetRateDir(Both, bps) }

// SetRateDir is SetRate for one direction: Uplink shapes the node's eth0, Downlink
// shapes the gateway's end (what the node can receive).
func (l *Link) SetRateDir(d Direction, bps uint64) error {
	if d == Both || d == Uplink {
		if err := setRate(l.node.nl, "eth0", bps); err != nil {
			return fmt.Errorf("netlab: rate up on %s: %w", l.node.name, err)
		}
	}
	if d == Both || d == Downlink {
		if err := setRate(l.gw.nl, l.peer, bps); err != nil {
			return fmt.Errorf("netlab: rate down on %s: %w", l.node.name, err)
		}
	}
	return nil
}

func setRate(h *netlink.Handle, ifname string, bps uint64) error {
	link, err := h.LinkByName(ifname)
	if err != nil {
		return err
	}
	attrs := netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT}
	if bps == 0 {
		err := h.QdiscDel(&netlink.Tbf{QdiscAttrs: attrs})
		if err != nil && err != unix.ENOENT && err != unix.EINVAL {
			return err
		}
		return nil
	}
	rate := bps / 8                      // bytes per second
	burst := max(rate/100, 3200)         // 10 ms, at least two full packets
	limit := max(rate/10, 16000) + burst // about 100 ms of queue
	return h.QdiscReplace(&netlink.Tbf{
		QdiscAttrs: attrs,
		Rate:       rate,
		Limit:      uint32(min(limit, math.MaxUint32)),
		Buffer:     netlink.Xmittime(rate, uint32(burst)),
	})
}
