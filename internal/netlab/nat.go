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
	// ADMAPDF maps address-dependently (one public port per inside
	// socket and destination address, whatever the destination port) and
	// filters address-and-port-dependently.
	ADMAPDF
)

// Kinds lists every Kind.
var Kinds = []Kind{Routed, EIMEIF, EIMADF, EIMAPDF, ADMAPDF, SymmetricSequential, SymmetricRandom, BlockUDP}

var kindNames = map[Kind]string{
	Routed:              "routed",
	EIMEIF:              "eim-eif",
	EIMADF:              "eim-adf",
	EIMAPDF:             "eim-apdf",
	SymmetricSequential: "symmetric-seq",
	SymmetricRandom:     "symmetric-random",
	BlockUDP:            "block-udp",
	ADMAPDF:             "adm-apdf",
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
	case ADMAPDF:
		return AddressDependent
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
	case EIMAPDF, ADMAPDF, SymmetricSequential, SymmetricRandom:
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
	// defaultTimeout is how long an idle mapping stays open to inbound
	// packets in the filtering sets when no MappingTimeout is given
	// (conntrack's own UDP timeouts then time the mapping itself: 30 s
	// unreplied, 120 s replied).
	defaultTimeout = 120 * time.Second
)

// NAT is a node routing between a network it is attached to (its outside,
// eth0) and a private network of its own (br0) that hosts attach to.
type NAT struct {
	*Node
	kind Kind
	lan  *segment
	opts natOptions
}

type natOptions struct {
	hairpin bool
	timeout time.Duration
}

// NATOption configures Lab.NAT.
type NATOption func(*natOptions)

// Hairpin makes the NAT hairpin UDP (RFC 4787 section 6, REQ-9): a
// packet from inside to one of its public mappings is turned back inside,
// its source translated to the sender's own public mapping. Filtering does
// not apply to hairpinned packets. Without it the lab's NATs do not
// hairpin.
func Hairpin() NATOption { return func(o *natOptions) { o.hairpin = true } }

// MappingTimeout sets how long an idle UDP mapping lives (whole seconds,
// at least 1): the NAT namespace's conntrack UDP timeouts and the expiry
// of its filtering sets (RFC 4787 section 4.3 binding lifetime). Default:
// conntrack's 30 s (a request and its answer) or 120 s (a stream).
func MappingTimeout(d time.Duration) NATOption {
	return func(o *natOptions) { o.timeout = max(d.Truncate(time.Second), time.Second) }
}

// Hairpins says whether the NAT hairpins.
func (n *NAT) Hairpins() bool { return n.opts.hairpin }

func (n *NAT) segment() *segment { return n.lan }

// Kind is the NAT's behaviour.
func (n *NAT) Kind() Kind { return n.kind }

// LAN is the NAT's private (inside) network.
func (n *NAT) LAN() netip.Prefix { return n.lan.prefix }

// NAT adds a NAT of the given kind named name to the network on; hosts and
// further NATs attach to its private side (a NAT behind a NAT makes two
// levels of translation).
func (l *Lab) NAT(name string, on Network, kind Kind, opts ...NATOption) *NAT {
	if l.tb != nil {
		l.tb.Helper()
	}
	var o natOptions
	for _, f := range opts {
		f(&o)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return &NAT{Node: &Node{lab: l, name: name}, kind: kind, lan: &segment{}}
	}
	n, err := l.newNATLocked(name, on.segment(), kind, o)
	if err != nil {
		l.failLocked(fmt.Errorf("netlab: nat %s: %w", name, err))
		return &NAT{Node: &Node{lab: l, name: name}, kind: kind, lan: &segment{}}
	}
	return n
}

func (l *Lab) newNATLocked(name string, parent *segment, kind Kind, o natOptions) (*NAT, error) {
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
	sys := map[string]string{
		"ipv4/ip_forward":              "1",
		"ipv4/conf/all/send_redirects": "0",
		"ipv4/conf/br0/send_redirects": "0",
	}
	if o.timeout > 0 {
		secs := fmt.Sprint(int(o.timeout.Seconds()))
		sys["netfilter/nf_conntrack_udp_timeout"] = secs
		sys["netfilter/nf_conntrack_udp_timeout_stream"] = secs
	}
	if err := node.sysctls(sys); err != nil {
		return nil, err
	}
	n := &NAT{Node: node, kind: kind, lan: &segment{gw: node, prefix: lan, gwAddr: gw, next: gw.Next()}, opts: o}
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
//	    snat to PUBLIC:jhash(saddr . sport . daddr)   (ADMAPDF: one port per
//	        inside socket and destination address)
//	    snat to PUBLIC:10000-29999 random    (SymmetricRandom: a random port
//	        per new conntrack entry, i.e. per destination)
//	    snat to PUBLIC:numgen inc            (SymmetricSequential: the next
//	        port per new conntrack entry)
//	  anything else leaving eth0: snat to PUBLIC (ports kept). With
//	  Hairpin, UDP routed from br0 back to br0 gets the same snat.
//	chain learn (filter postrouting 300, after NAT): for EIMEIF, EIMADF and
//	  hairpinning NATs, each UDP packet leaving eth0 in the original
//	  direction records
//	    @mapping  { public port : inside addr . inside port }
//	    @sent     { public port . destination addr }       (EIMADF)
//	chain pre (nat prerouting, dstnat): a UDP packet starting a new flow
//	  to PUBLIC:port is dnat'ed through @mapping: from eth0 for EIMEIF,
//	  and for EIMADF only when {port . source addr} is in @sent; from br0
//	  with Hairpin. Everything else new from outside finds no conntrack
//	  entry and is dropped: that alone is address-and-port-dependent
//	  filtering (EIMAPDF, ADMAPDF, the symmetric kinds).
//	chain fwd, chain in (filter): from eth0, only established/related or
//	  dnat'ed flows pass; BlockUDP drops UDP both ways.
//
// It is one function of about 120 lines on purpose: its rules follow the
// table above in order, one table read against one listing.
func (n *NAT) installRules() error {
	c, err := nftables.New(nftables.WithNetNSFd(int(n.ns)))
	if err != nil {
		return err
	}
	pub := n.Addr().As4()
	timeout := n.opts.timeout
	if timeout == 0 {
		timeout = defaultTimeout
	}
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
	var snat []expr.Any
	switch n.kind {
	case EIMEIF, EIMADF, EIMAPDF:
		snat = snatRange(pub, false)
	case ADMAPDF:
		snat = snatByDestination(pub)
	case SymmetricRandom:
		snat = snatRange(pub, true)
	case SymmetricSequential:
		snat = snatSequential(pub)
	}
	if snat != nil {
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: cat(udpOut, snat)})
		if n.opts.hairpin {
			c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: cat(
				ifname(unix.NFT_META_IIFNAME, "br0"), ifname(unix.NFT_META_OIFNAME, "br0"),
				l4proto(unix.IPPROTO_UDP), snat)})
		}
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: cat(ifname(unix.NFT_META_OIFNAME, "eth0"),
		[]expr.Any{
			&expr.Immediate{Register: 1, Data: pub[:]},
			&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
		})})

	inbound := n.kind == EIMEIF || n.kind == EIMADF
	if snat == nil || (!inbound && !n.opts.hairpin) {
		return c.Flush()
	}
	mapping := &nftables.Set{
		Table: t, Name: "mapping", IsMap: true, Dynamic: true, HasTimeout: true, Timeout: timeout,
		KeyType:  nftables.TypeInetService,
		DataType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService),
	}
	if err := c.AddSet(mapping, nil); err != nil {
		return err
	}
	var sent *nftables.Set
	if n.kind == EIMADF {
		sent = &nftables.Set{
			Table: t, Name: "sent", Dynamic: true, HasTimeout: true, Timeout: timeout, Concatenation: true,
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
	toPublic := func(iface string) []expr.Any {
		return cat(ifname(unix.NFT_META_IIFNAME, iface), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: pub[:]},
		}, l4proto(unix.IPPROTO_UDP))
	}
	dnat := []expr.Any{
		udpPort(1, 2),
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: mapping.Name, SetID: mapping.ID},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 9, Specified: true},
	}
	if n.opts.hairpin {
		c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: cat(toPublic("br0"), dnat)})
	}
	if inbound {
		in := toPublic("eth0")
		if sent != nil {
			in = cat(in, []expr.Any{
				udpPort(1, 2), // public destination port
				&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}, // saddr
				&expr.Lookup{SourceRegister: 1, SetName: sent.Name, SetID: sent.ID},
			})
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: cat(in, dnat)})
	}
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

// snatByDestination is "snat to PUB:(jhash ip saddr . udp sport . ip
// daddr mod N offset 10000)": a port fixed by the inside socket and the
// destination address, whatever the destination port (address-dependent
// mapping). Two such keys hashing to one port (or a port in use towards
// that destination) make the packet wait for another; rare in a lab.
func snatByDestination(pub [4]byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 12, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}, // saddr
		udpPort(13, 0),
		&expr.Payload{DestRegister: 14, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}, // daddr
		&expr.Hash{SourceRegister: 12, DestRegister: 3, Length: 12, Modulus: natPortMax - natPortMin + 1, Offset: natPortMin, Type: expr.HashTypeJenkins},
		&expr.Byteorder{SourceRegister: 3, DestRegister: 3, Op: expr.ByteorderHton, Len: 2, Size: 2},
		&expr.Immediate{Register: 1, Data: pub[:]},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 3, Specified: true},
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
