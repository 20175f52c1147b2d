package netlab

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Kind is a NAT's behaviour, in RFC 4787 terms (section 4.1 mapping, 4.1.1
// port assignment, section 5 filtering).
type Kind int

const (
	// Routed is a plain router, no NAT: the hosts behind it get public
	// addresses (a 198.51.100.0/28 block the internet routes to it).
	Routed Kind = iota
	// EIMEIF maps endpoint-independently and lets anyone reach a
	// mapping ("full cone").
	EIMEIF
	// EIMADF maps endpoint-independently and lets in only addresses the
	// mapping has sent to ("restricted cone").
	EIMADF
	// EIMAPDF maps endpoint-independently and lets in only the address
	// and port pairs the mapping has sent to ("port-restricted cone").
	EIMAPDF
	// SymmetricSequential maps address-and-port-dependently (a new public
	// port for every destination, "symmetric") and hands ports out in
	// sequence.
	SymmetricSequential
	// SymmetricRandom is SymmetricSequential with random ports.
	SymmetricRandom
	// BlockUDP is a firewall that drops all UDP both ways and lets TCP
	// (so TLS) through, translating it like EIMAPDF.
	BlockUDP
)

// Kinds lists every Kind.
var Kinds = []Kind{Routed, EIMEIF, EIMADF, EIMAPDF, SymmetricSequential, SymmetricRandom, BlockUDP}

var kindNames = map[Kind]string{
	Routed:              "routed",
	EIMEIF:              "eim-eif",
	EIMADF:              "eim-adf",
	EIMAPDF:             "eim-apdf",
	SymmetricSequential: "symmetric-seq",
	SymmetricRandom:     "symmetric-random",
	BlockUDP:            "block-udp",
}

func (k Kind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// ParseKind is the inverse of Kind.String.
func ParseKind(s string) (Kind, error) {
	for k, n := range kindNames {
		if n == s {
			return k, nil
		}
	}
	return 0, fmt.Errorf("netlab: unknown NAT kind %q", s)
}

// Behavior is an RFC 4787 mapping or filtering behaviour.
type Behavior int

const (
	// NoBehavior: the question does not apply (UDP is blocked).
	NoBehavior Behavior = iota
	// EndpointIndependent (RFC 4787 sections 4.1, 5).
	EndpointIndependent
	// AddressDependent (RFC 4787 sections 4.1, 5).
	AddressDependent
	// AddressAndPortDependent (RFC 4787 sections 4.1, 5).
	AddressAndPortDependent
)

func (b Behavior) String() string {
	switch b {
	case EndpointIndependent:
		return "endpoint-independent"
	case AddressDependent:
		return "address-dependent"
	case AddressAndPortDependent:
		return "address-and-port-dependent"
	}
	return "none"
}

// Mapping is the kind's UDP mapping behaviour (a router maps nothing, which
// looks endpoint-independent).
func (k Kind) Mapping() Behavior {
	switch k {
	case Routed, EIMEIF, EIMADF, EIMAPDF:
		return EndpointIndependent
	case SymmetricSequential, SymmetricRandom:
		return AddressAndPortDependent
	}
	return NoBehavior
}

// Filtering is the kind's UDP filtering behaviour.
func (k Kind) Filtering() Behavior {
	switch k {
	case Routed, EIMEIF:
		return EndpointIndependent
	case EIMADF:
		return AddressDependent
	case EIMAPDF, SymmetricSequential, SymmetricRandom:
		return AddressAndPortDependent
	}
	return NoBehavior
}

// Translates says whether the kind rewrites addresses.
func (k Kind) Translates() bool { return k != Routed }

// Public ports a NAT maps to (outside Linux's ephemeral 32768-60999, so
// that mapped ports never just repeat the inside ones).
const (
	natPortMin = 10000
	natPortMax = 29999
	// bindingTimeout is how long an idle mapping stays open to inbound
	// packets in the filtering sets (conntrack's own UDP timeouts apply to
	// the mapping itself: 30 s unreplied, 120 s replied).
	bindingTimeout = 120 * time.Second
)

// NAT is a node routing between a network it is attached to (its outside,
// eth0) and a private network of its own (br0) that hosts attach to.
type NAT struct {
	*Node
	kind Kind
	lan  *segment
}

func (n *NAT) segment() *segment { return n.lan }

// Kind is the NAT's behaviour.
func (n *NAT) Kind() Kind { return n.kind }

// LAN is the NAT's private (inside) network.
func (n *NAT) LAN() netip.Prefix { return n.lan.prefix }

// NAT adds a NAT of the given kind named name to the network on; hosts and
// further NATs attach to its private side (a NAT behind a NAT makes two
// levels of translation).
func (l *Lab) NAT(name string, on Network, kind Kind) *NAT {
	if l.tb != nil {
		l.tb.Helper()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return &NAT{Node: &Node{lab: l, name: name}, kind: kind, lan: &segment{}}
	}
	n, err := l.newNATLocked(name, on.segment(), kind)
	if err != nil {
		l.failLocked(fmt.Errorf("netlab: nat %s: %w", name, err))
		return &NAT{Node: &Node{lab: l, name: name}, kind: kind, lan: &segment{}}
	}
	return n
}

func (l *Lab) newNATLocked(name string, parent *segment, kind Kind) (*NAT, error) {
	if _, ok := kindNames[kind]; !ok {
		return nil, fmt.Errorf("unknown kind %d", kind)
	}
	var lan netip.Prefix
	if kind == Routed {
		if l.nextRouted >= 16 {
			return nil, fmt.Errorf("%w: no /28 left in %s", ErrFull, routedBlock)
		}
		a := routedBlock.Addr().As4()
		a[3] = byte(16 * l.nextRouted)
		lan = netip.PrefixFrom(netip.AddrFrom4(a), 28)
		l.nextRouted++
	} else {
		l.nextLAN++
		if l.nextLAN > 255 {
			return nil, fmt.Errorf("%w: no private /24 left", ErrFull)
		}
		lan = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(l.nextLAN), 0, 0}), 24)
	}
	node, err := l.newNodeLocked(name)
	if err != nil {
		return nil, err
	}
	if err := l.attachLocked(node, parent, 1); err != nil {
		return nil, err
	}
	gw := lan.Addr().Next()
	if err := node.addBridge(netip.PrefixFrom(gw, lan.Bits())); err != nil {
		return nil, err
	}
	if err := node.sysctls(map[string]string{
		"ipv4/ip_forward":              "1",
		"ipv4/conf/all/send_redirects": "0",
	}); err != nil {
		return nil, err
	}
	n := &NAT{Node: node, kind: kind, lan: &segment{gw: node, prefix: lan, gwAddr: gw, next: gw.Next()}}
	if kind == Routed {
		// The parent network's gateway routes the block to us.
		err := parent.gw.nl.RouteAdd(&netlink.Route{
			Dst: nlAddr(lan.Masked()).IPNet,
			Gw:  node.Addr().AsSlice(),
		})
		if err != nil {
			return nil, fmt.Errorf("route %s in %s: %w", lan, parent.gw.name, err)
		}
		return n, nil
	}
	if err := n.installRules(); err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return n, nil
}

// The NAT's rules, table ip "netlab" in its namespace:
//
//	chain post (nat postrouting, srcnat): UDP leaving eth0 is
//	    snat to PUBLIC:10000-29999           (EIM kinds; the kernel reuses a
//	        source's existing mapping, nf_nat's find_appropriate_src)
//	    snat to PUBLIC:10000-29999 random    (SymmetricRandom: a random port
//	        per new conntrack entry, i.e. per destination)
//	    snat to PUBLIC:numgen inc            (SymmetricSequential: the next
//	        port per new conntrack entry)
//	  anything else leaving eth0: snat to PUBLIC (ports kept).
//	chain learn (filter postrouting 300, after NAT): for EIMEIF and EIMADF,
//	  each UDP packet leaving in the original direction records
//	    @mapping  { public port : inside addr . inside port }
//	    @sent     { public port . destination addr }       (EIMADF)
//	chain pre (nat prerouting, dstnat): a UDP packet starting a new flow
//	  to PUBLIC:port is dnat'ed through @mapping (EIMEIF), only when
//	  {port . source addr} is in @sent (EIMADF). Everything else new from
//	  outside finds no conntrack entry and is dropped: that alone is
//	  address-and-port-dependent filtering (EIMAPDF, the symmetric kinds).
//	chain fwd, chain in (filter): from eth0, only established/related or
//	  dnat'ed flows pass; BlockUDP drops UDP both ways.
func (n *NAT) installRules() error {
	c, err := nftables.New(nftables.WithNetNSFd(int(n.ns)))
	if err != nil {
		return err
	}
	pub := n.Addr().As4()
	t := c.AddTable(&nftables.Table{Name: "netlab", Family: nftables.TableFamilyIPv4})
	filterOutside := func(name string, hook *nftables.ChainHook) {
		ch := c.AddChain(&nftables.Chain{Name: name, Table: t, Type: nftables.ChainTypeFilter, Hooknum: hook, Priority: nftables.ChainPriorityFilter})
		if n.kind == BlockUDP {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: cat(l4proto(unix.IPPROTO_UDP), drop())})
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: cat(ifname(unix.NFT_META_IIFNAME, "eth0"), ctStateEstablished(), accept())})
		if name == "fwd" {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: cat(ifname(unix.NFT_META_IIFNAME, "eth0"), ctStatusDNAT(), accept())})
		} else {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: cat(ifname(unix.NFT_META_IIFNAME, "eth0"), l4proto(unix.IPPROTO_ICMP), accept())})
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: cat(ifname(unix.NFT_META_IIFNAME, "eth0"), drop())})
	}
	filterOutside("fwd", nftables.ChainHookForward)
	filterOutside("in", nftables.ChainHookInput)

	post := c.AddChain(&nftables.Chain{Name: "post", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	udpOut := cat(ifname(unix.NFT_META_OIFNAME, "eth0"), l4proto(unix.IPPROTO_UDP))
	switch n.kind {
	case EIMEIF, EIMADF, EIMAPDF:
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: cat(udpOut, snatRange(pub, false))})
	case SymmetricRandom:
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: cat(udpOut, snatRange(pub, true))})
	case SymmetricSequential:
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: cat(udpOut, snatSequential(pub))})
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: cat(ifname(unix.NFT_META_OIFNAME, "eth0"),
		[]expr.Any{
			&expr.Immediate{Register: 1, Data: pub[:]},
			&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
		})})

	if n.kind != EIMEIF && n.kind != EIMADF {
		return c.Flush()
	}
	mapping := &nftables.Set{
		Table: t, Name: "mapping", IsMap: true, Dynamic: true, HasTimeout: true, Timeout: bindingTimeout,
		KeyType:  nftables.TypeInetService,
		DataType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService),
	}
	if err := c.AddSet(mapping, nil); err != nil {
		return err
	}
	var sent *nftables.Set
	if n.kind == EIMADF {
		sent = &nftables.Set{
			Table: t, Name: "sent", Dynamic: true, HasTimeout: true, Timeout: bindingTimeout, Concatenation: true,
			KeyType: nftables.MustConcatSetType(nftables.TypeInetService, nftables.TypeIPAddr),
		}
		if err := c.AddSet(sent, nil); err != nil {
			return err
		}
	}
	learn := c.AddChain(&nftables.Chain{Name: "learn", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityRef(300)})
	outOrig := cat(udpOut, []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeyDIRECTION},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{ctDirOriginal}},
	})
	c.AddRule(&nftables.Rule{Table: t, Chain: learn, Exprs: cat(outOrig, []expr.Any{
		udpPort(1, 0), // public (translated) source port
		&expr.Ct{Register: 2, Key: expr.CtKeySRC, Direction: ctDirOriginal},
		&expr.Ct{Register: 13, Key: expr.CtKeyPROTOSRC, Direction: ctDirOriginal},
		&expr.Dynset{SrcRegKey: 1, SrcRegData: 2, SetName: mapping.Name, SetID: mapping.ID, Operation: unix.NFT_DYNSET_OP_UPDATE},
	})})
	if sent != nil {
		c.AddRule(&nftables.Rule{Table: t, Chain: learn, Exprs: cat(outOrig, []expr.Any{
			udpPort(1, 0),
			&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}, // daddr
			&expr.Dynset{SrcRegKey: 1, SetName: sent.Name, SetID: sent.ID, Operation: unix.NFT_DYNSET_OP_UPDATE},
		})})
	}

	pre := c.AddChain(&nftables.Chain{Name: "pre", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	in := cat(ifname(unix.NFT_META_IIFNAME, "eth0"), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: pub[:]},
	}, l4proto(unix.IPPROTO_UDP))
	if sent != nil {
		in = cat(in, []expr.Any{
			udpPort(1, 2), // public destination port
			&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}, // saddr
			&expr.Lookup{SourceRegister: 1, SetName: sent.Name, SetID: sent.ID},
		})
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: cat(in, []expr.Any{
		udpPort(1, 2),
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: mapping.Name, SetID: mapping.ID},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 9, Specified: true},
	})})
	return c.Flush()
}

// From linux/netfilter/nf_conntrack_common.h.
const (
	ctDirOriginal = 0
	ipsDstNAT     = 1 << 5
)

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func ifname(key expr.MetaKey, name string) []expr.Any {
	b := make([]byte, 16)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	}
}

func l4proto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// udpPort loads the UDP source (off 0) or destination (off 2) port.
func udpPort(reg, off uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2}
}

func ctStateEstablished() []expr.Any {
	mask := binary.NativeEndian.AppendUint32(nil, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

func ctStatusDNAT() []expr.Any {
	mask := binary.NativeEndian.AppendUint32(nil, ipsDstNAT)
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }
func drop() []expr.Any   { return []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}} }

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// snatRange is "snat to PUB:10000-29999 [random]".
func snatRange(pub [4]byte, random bool) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: pub[:]},
		&expr.Immediate{Register: 2, Data: be16(natPortMin)},
		&expr.Immediate{Register: 3, Data: be16(natPortMax)},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, RegProtoMax: 3, Specified: true, Random: random},
	}
}

// snatSequential is "snat to PUB:(numgen inc mod N offset 10000)": the nat
// chain runs once per new conntrack entry, so every new flow takes the next
// port. numgen yields a host-order number; the port must be big-endian.
func snatSequential(pub [4]byte) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: pub[:]},
		&expr.Numgen{Register: 2, Modulus: natPortMax - natPortMin + 1, Type: unix.NFT_NG_INCREMENTAL, Offset: natPortMin},
		&expr.Byteorder{SourceRegister: 2, DestRegister: 2, Op: expr.ByteorderHton, Len: 2, Size: 2},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}
}
