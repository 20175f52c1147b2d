//go:build linux

// Package nftoffload moves latched media proxy flows into the kernel with
// nftables rules (github.com/google/nftables, no shelling out). It is one
// owner of mediaproxy.Offloader; an eBPF fast path can own the same flows
// later behind the same interface.
//
// # Rules
//
// One table (default "traverse_mediaproxy", family ip) holds two base
// chains and two verdict maps keyed by the UDP 4-tuple
// (saddr . sport . daddr . dport):
//
//	prerouting, priority raw (-300): the "pre" map jumps to the flow's chain,
//	  which counts the packet (a named counter), marks it notrack and rewrites
//	  the destination: client->fixed port becomes ->server; server->inside
//	  port becomes ->client.
//	postrouting, priority srcnat (100): the "post" map, keyed by the
//	  rewritten tuple, jumps to the chain that rewrites the source: the
//	  client's packet leaves from the inside port, the server's from the fixed
//	  port.
//
// Lookups are hash lookups, so the cost per packet does not grow with the
// number of flows. Checksums are fixed by the payload statements (IP header
// checksum and the UDP pseudo-header).
//
// # Conntrack
//
// The mangling is stateless and the packets are marked notrack before
// conntrack sees them (raw priority runs before conntrack's -200), so the
// entries the user-space socket flows created earlier neither match nor get
// in the way; they time out on their own. (rtpengine sidesteps conntrack
// differently: its kernel module is an iptables target in INPUT that sends
// the rewritten packet itself.) A forward filter with "ct state
// established" must also accept "ct state untracked". The host must forward
// IPv4 (net.ipv4.ip_forward=1). IPv4 only.
package nftoffload

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/traverse-rtc/traverse/internal/mediaproxy"
)

// Config configures an Offloader.
type Config struct {
	// Table is the nftables table it owns (default traverse_mediaproxy);
	// New replaces any table of that name.
	Table string
	// NetNS is a network namespace file descriptor (0: the current one).
	NetNS int
	// StatsMaxAge is how stale counters read back may be (default 500 ms):
	// one dump serves every Stats call within it.
	StatsMaxAge time.Duration
}

// Offloader installs flows as nftables rules. It is safe for concurrent use.
type Offloader struct {
	cfg Config

	mu        sync.Mutex // guards everything below
	conn      *nftables.Conn
	table     *nftables.Table
	pre, post *nftables.Set
	flows     map[mediaproxy.Flow]uint32
	next      uint32
	counters  map[string][2]uint64 // counter name -> packets, bytes
	readAt    time.Time
}

var _ mediaproxy.Offloader = (*Offloader)(nil)

// New creates the table, chains and maps.
func New(cfg Config) (*Offloader, error) {
	if cfg.Table == "" {
		cfg.Table = "traverse_mediaproxy"
	}
	if cfg.StatsMaxAge <= 0 {
		cfg.StatsMaxAge = 500 * time.Millisecond
	}
	var opts []nftables.ConnOption
	if cfg.NetNS != 0 {
		opts = append(opts, nftables.WithNetNSFd(cfg.NetNS))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftoffload: %w", err)
	}
	o := &Offloader{cfg: cfg, conn: c, flows: map[mediaproxy.Flow]uint32{}}
	o.table = &nftables.Table{Family: nftables.TableFamilyIPv4, Name: cfg.Table}
	if t, err := c.ListTableOfFamily(cfg.Table, nftables.TableFamilyIPv4); err == nil && t != nil {
		c.DelTable(o.table)
		if err := c.Flush(); err != nil {
			return nil, fmt.Errorf("nftoffload: remove stale table: %w", err)
		}
	}
	c.AddTable(o.table)
	key := nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService, nftables.TypeIPAddr, nftables.TypeInetService)
	o.pre = &nftables.Set{Table: o.table, Name: "pre", IsMap: true, KeyType: key, DataType: nftables.TypeVerdict, Concatenation: true}
	o.post = &nftables.Set{Table: o.table, Name: "post", IsMap: true, KeyType: key, DataType: nftables.TypeVerdict, Concatenation: true}
	for _, s := range []*nftables.Set{o.pre, o.post} {
		if err := c.AddSet(s, nil); err != nil {
			return nil, fmt.Errorf("nftoffload: %w", err)
		}
	}
	policy := nftables.ChainPolicyAccept
	pre := c.AddChain(&nftables.Chain{Name: "prerouting", Table: o.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: &policy})
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: o.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &policy})
	c.AddRule(&nftables.Rule{Table: o.table, Chain: pre, Exprs: lookup(o.pre)})
	c.AddRule(&nftables.Rule{Table: o.table, Chain: post, Exprs: lookup(o.post)})
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("nftoffload: create table %s: %w", cfg.Table, err)
	}
	return o, nil
}

// lookup is "meta l4proto udp ip saddr . udp sport . ip daddr . udp dport vmap @set".
func lookup(s *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Payload{DestRegister: 10, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Payload{DestRegister: 11, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: s.Name, SetID: s.ID},
	}
}

func key(src, dst netip.AddrPort) []byte {
	b := make([]byte, 16)
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(b[0:4], s[:])
	binary.BigEndian.PutUint16(b[4:], src.Port())
	copy(b[8:12], d[:])
	binary.BigEndian.PutUint16(b[12:], dst.Port())
	return b
}

// rewrite returns the statements setting the destination (dst true) or
// source address and port, with checksum fix-ups.
func rewrite(ap netip.AddrPort, dst bool) []expr.Any {
	a := ap.Addr().As4()
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], ap.Port())
	ipOff, portOff := uint32(12), uint32(0)
	if dst {
		ipOff, portOff = 16, 2
	}
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: a[:]},
		&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: 1, Base: expr.PayloadBaseNetworkHeader,
			Offset: ipOff, Len: 4, CsumType: expr.CsumTypeInet, CsumOffset: 10, CsumFlags: unix.NFT_PAYLOAD_L4CSUM_PSEUDOHDR},
		&expr.Immediate{Register: 1, Data: port[:]},
		&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: 1, Base: expr.PayloadBaseTransportHeader,
			Offset: portOff, Len: 2, CsumType: expr.CsumTypeInet, CsumOffset: 6},
	}
}

func names(id uint32) (fwdPre, fwdPost, revPre, revPost, cFwd, cRev string) {
	return fmt.Sprintf("f%d_in", id), fmt.Sprintf("f%d_in_src", id), fmt.Sprintf("f%d_out", id), fmt.Sprintf("f%d_out_src", id),
		fmt.Sprintf("c%d_in", id), fmt.Sprintf("c%d_out", id)
}

func check(f mediaproxy.Flow) error {
	for _, ap := range []netip.AddrPort{f.Client, f.Fixed, f.Inside, f.Server, f.ServerSrc} {
		if !ap.Addr().Unmap().Is4() || ap.Addr().IsUnspecified() {
			return fmt.Errorf("nftoffload: %v: only IPv4 flows with specific addresses", ap)
		}
	}
	return nil
}

// Offload installs both directions of f.
func (o *Offloader) Offload(f mediaproxy.Flow) error {
	if err := check(f); err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.conn == nil {
		return mediaproxy.ErrClosed
	}
	if _, ok := o.flows[f]; ok {
		return nil
	}
	o.next++
	id := o.next
	fwdPre, fwdPost, revPre, revPost, cFwd, cRev := names(id)
	c := o.conn
	for _, n := range []string{cFwd, cRev} {
		c.AddObj(&nftables.NamedObj{Table: o.table, Name: n, Type: nftables.ObjTypeCounter, Obj: &expr.Counter{}})
	}
	chain := func(name string, exprs []expr.Any) {
		ch := c.AddChain(&nftables.Chain{Name: name, Table: o.table})
		c.AddRule(&nftables.Rule{Table: o.table, Chain: ch, Exprs: exprs})
	}
	counted := func(counter string, rest []expr.Any) []expr.Any {
		return append([]expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: counter}, &expr.Notrack{}}, rest...)
	}
	chain(fwdPre, counted(cFwd, rewrite(f.Server, true)))
	chain(fwdPost, rewrite(f.Inside, false))
	chain(revPre, counted(cRev, rewrite(f.Client, true)))
	chain(revPost, rewrite(f.Fixed, false))
	jump := func(name string) *expr.Verdict { return &expr.Verdict{Kind: expr.VerdictJump, Chain: name} }
	if err := c.SetAddElements(o.pre, []nftables.SetElement{
		{Key: key(f.Client, f.Fixed), VerdictData: jump(fwdPre)},
		{Key: key(f.ServerSrc, f.Inside), VerdictData: jump(revPre)},
	}); err != nil {
		return err
	}
	if err := c.SetAddElements(o.post, []nftables.SetElement{
		{Key: key(f.Client, f.Server), VerdictData: jump(fwdPost)},
		{Key: key(f.ServerSrc, f.Client), VerdictData: jump(revPost)},
	}); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftoffload: install flow: %w", err)
	}
	o.flows[f] = id
	return nil
}

// Remove uninstalls f.
func (o *Offloader) Remove(f mediaproxy.Flow) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	id, ok := o.flows[f]
	if !ok {
		return nil
	}
	delete(o.flows, f)
	c := o.conn
	if err := c.SetDeleteElements(o.pre, []nftables.SetElement{{Key: key(f.Client, f.Fixed)}, {Key: key(f.ServerSrc, f.Inside)}}); err != nil {
		return err
	}
	if err := c.SetDeleteElements(o.post, []nftables.SetElement{{Key: key(f.Client, f.Server)}, {Key: key(f.ServerSrc, f.Client)}}); err != nil {
		return err
	}
	fwdPre, fwdPost, revPre, revPost, cFwd, cRev := names(id)
	for _, n := range []string{fwdPre, fwdPost, revPre, revPost} {
		ch := &nftables.Chain{Name: n, Table: o.table}
		c.FlushChain(ch)
		c.DelChain(ch)
	}
	for _, n := range []string{cFwd, cRev} {
		c.DeleteObject(&nftables.NamedObj{Table: o.table, Name: n, Type: nftables.ObjTypeCounter})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftoffload: remove flow: %w", err)
	}
	return nil
}

// Stats returns the kernel's packet and byte counts for f, both directions.
func (o *Offloader) Stats(f mediaproxy.Flow) (packets, bytes uint64, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	id, ok := o.flows[f]
	if !ok || o.conn == nil {
		return 0, 0, mediaproxy.ErrNoSession
	}
	if o.counters == nil || time.Since(o.readAt) > o.cfg.StatsMaxAge {
		objs, err := o.conn.GetNamedObjects(o.table)
		if err != nil {
			return 0, 0, fmt.Errorf("nftoffload: read counters: %w", err)
		}
		m := make(map[string][2]uint64, len(objs))
		for _, obj := range objs {
			no, ok := obj.(*nftables.NamedObj)
			if !ok {
				continue
			}
			if ctr, ok := no.Obj.(*expr.Counter); ok {
				m[no.Name] = [2]uint64{ctr.Packets, ctr.Bytes}
			}
		}
		o.counters, o.readAt = m, time.Now()
	}
	_, _, _, _, cFwd, cRev := names(id)
	a, b := o.counters[cFwd], o.counters[cRev]
	return a[0] + b[0], a[1] + b[1], nil
}

// Flows returns the number of flows installed.
func (o *Offloader) Flows() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.flows)
}

// Close deletes the table and every flow in it. It is idempotent.
func (o *Offloader) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.conn == nil {
		return nil
	}
	o.conn.DelTable(o.table)
	err := o.conn.Flush()
	o.conn, o.flows = nil, nil
	return err
}
