package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/traverse-rtc/traverse/internal/nsthread"
	"github.com/vishvananda/netlink"
)

// Prefix starts the name of every namespace a lab creates; the full name is
// Prefix + LAB + "-" + NODE, so that Down and Clean find them after a crash.
const Prefix = "tl-"

// nsDir is where named network namespaces are bind-mounted (as by iproute2).
const nsDir = "/run/netns"

// Address plan. Documentation ranges only (RFC 5737), private ranges behind
// NATs (RFC 1918).
var (
	internetPrefix = netip.MustParsePrefix("203.0.113.0/24")
	routedBlock    = netip.MustParsePrefix("198.51.100.0/24") // split in /28s
)

// TB is the part of testing.TB that New uses.
type TB interface {
	Helper()
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
	Cleanup(func())
}

// Lab is one network of namespaces: an internet, NATs and hosts. Builder
// methods (Host, NAT) are meant for one goroutine. A lab made by New fails
// its test on the first error; one made by Open keeps the first error for
// Err and turns later builder calls into no-ops.
type Lab struct {
	id     string
	tb     TB
	ctx    context.Context // cancelled by Close: kills processes from Command
	cancel context.CancelFunc
	inet   *Internet

	mu         sync.Mutex // guards the fields below
	err        error
	nodes      []*Node
	names      map[string]bool
	nextLAN    int // private LANs are 10.nextLAN.0.0/24
	nextRouted int // public LANs are the nextRouted-th /28 of routedBlock
	nextIf     int
	closed     bool
}

var (
	nameRE = regexp.MustCompile(`^[a-z0-9]{1,12}$`)
	labRE  = regexp.MustCompile(`^[a-z0-9]{1,16}$`)
	// Labs made by New are named p<PID>x<random>: when that process is
	// gone (killed by a test timeout, say), the next New removes them.
	orphanRE = regexp.MustCompile(`^p([0-9]+)x[0-9a-f]+$`)
)

// reapOrphans removes the labs of test processes that no longer exist.
func reapOrphans() {
	infos, err := namespaces(Prefix + "p")
	if err != nil {
		return
	}
	seen := map[string]bool{}
	for _, ns := range infos {
		lab, _, _ := strings.Cut(strings.TrimPrefix(ns, Prefix), "-")
		m := orphanRE.FindStringSubmatch(lab)
		if m == nil || seen[lab] {
			continue
		}
		seen[lab] = true
		pid, err := strconv.Atoi(m[1])
		if err != nil || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue // alive, or not ours to judge
		}
		_ = Down(lab)
	}
}

// New builds an empty lab (just its internet) for a test and tears it down
// in tb.Cleanup, also when the test fails. It skips the test when not root.
// Builder errors fail the test. It first removes the labs that test
// processes which died without cleaning up left behind.
func New(tb TB) *Lab {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skipf("netlab: needs root to create network namespaces")
	}
	reapOrphans()
	var b [2]byte
	_, _ = rand.Read(b[:])
	l, err := Open(fmt.Sprintf("p%dx%x", os.Getpid(), b))
	if err != nil {
		tb.Fatalf("%v", err)
	}
	l.tb = tb
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Errorf("netlab: teardown: %v", err)
		}
	})
	return l
}

// Open builds an empty lab named name (1-16 of [a-z0-9]; random when
// empty): its namespaces
// are Prefix+name+"-"+node. Nothing tears it down but Close or Down, so
// that "traverse lab up" can leave it running.
func Open(name string) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if name == "" {
		var b [3]byte
		_, _ = rand.Read(b[:])
		name = hex.EncodeToString(b[:])
	}
	if !labRE.MatchString(name) {
		return nil, fmt.Errorf("%w: lab %q", ErrBadName, name)
	}
	if nss, err := namespaces(Prefix + name + "-"); err != nil {
		return nil, err
	} else if len(nss) > 0 {
		return nil, fmt.Errorf("%w: lab %q has namespace %s", ErrExists, name, nss[0])
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Lab{id: name, ctx: ctx, cancel: cancel, names: map[string]bool{}}
	inet, err := l.newInternet()
	if err != nil {
		_ = l.Close()
		return nil, err
	}
	l.inet = inet
	return l, nil
}

// Name is the lab's name, the middle of its namespaces' names.
func (l *Lab) Name() string { return l.id }

// Err is the first error a builder method met (for labs made by Open).
func (l *Lab) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Internet is the lab's public network.
func (l *Lab) Internet() *Internet { return l.inet }

// Nodes lists the lab's nodes in the order they were made.
func (l *Lab) Nodes() []*Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Node(nil), l.nodes...)
}

// failLocked records err; under a test it fails the test.
func (l *Lab) failLocked(err error) {
	if l.err == nil {
		l.err = err
	}
	if l.tb != nil {
		l.tb.Helper()
		l.tb.Fatalf("%v", err)
	}
}

// Close kills processes started with Command, then deletes every namespace
// of the lab (which removes their links). It is idempotent.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	nodes := l.nodes
	l.mu.Unlock()
	l.cancel()
	var errs []error
	for i := len(nodes) - 1; i >= 0; i-- {
		errs = append(errs, nodes[i].close())
	}
	return errors.Join(errs...)
}

// Host adds a host named name to the network on (the internet or a NAT's
// private side), with one address unless opts say otherwise, and a default
// route through that network's gateway.
func (l *Lab) Host(name string, on Network, opts ...HostOption) *Host {
	if l.tb != nil {
		l.tb.Helper()
	}
	cfg := hostConfig{addrs: 1}
	for _, o := range opts {
		o(&cfg)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return &Host{Node: &Node{lab: l, name: name}}
	}
	n, err := l.newNodeLocked(name)
	if err == nil {
		err = l.attachLocked(n, on.segment(), cfg.addrs)
	}
	if err != nil {
		l.failLocked(fmt.Errorf("netlab: host %s: %w", name, err))
	}
	return &Host{Node: n}
}

// Host is an end host: the place to run clients and servers.
type Host struct {
	*Node
}

type hostConfig struct {
	addrs int
}

// HostOption configures Lab.Host.
type HostOption func(*hostConfig)

// Addrs gives the host n addresses on its network (default 1), for
// instance the two an RFC 5780 STUN server needs.
func Addrs(n int) HostOption {
	return func(c *hostConfig) {
		if n > 0 {
			c.addrs = n
		}
	}
}

// Network is somewhere a node can be attached: the Internet or the private
// side of a NAT.
type Network interface {
	segment() *segment
}

// segment is one layer-2 network: a bridge "br0" in its gateway's namespace.
type segment struct {
	gw     *Node
	prefix netip.Prefix
	gwAddr netip.Addr
	next   netip.Addr // next free address
}

func (s *segment) alloc(n int) ([]netip.Addr, error) {
	last := lastAddr(s.prefix)
	var out []netip.Addr
	for range n {
		if !s.next.IsValid() || !s.next.Less(last) {
			return nil, fmt.Errorf("%w %s", ErrFull, s.prefix)
		}
		out = append(out, s.next)
		s.next = s.next.Next()
	}
	return out, nil
}

// lastAddr is p's broadcast address.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	bits := p.Bits()
	for i := range 4 {
		for b := range 8 {
			if i*8+b >= bits {
				a[i] |= 0x80 >> b
			}
		}
	}
	return netip.AddrFrom4(a)
}

// Internet is the lab's public network: a namespace holding the bridge that
// public hosts and the outside of NATs attach to, routing to the public
// blocks behind plain routers. It has no link to anything outside the lab.
type Internet struct {
	*Node
	seg *segment
}

func (i *Internet) segment() *segment { return i.seg }

// Prefix is the internet's address block.
func (i *Internet) Prefix() netip.Prefix { return i.seg.prefix }

func (l *Lab) newInternet() (*Internet, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.newNodeLocked("inet")
	if err != nil {
		return nil, err
	}
	gw := internetPrefix.Addr().Next()
	seg := &segment{gw: n, prefix: internetPrefix, gwAddr: gw, next: gw.Next()}
	if err := n.addBridge(netip.PrefixFrom(gw, internetPrefix.Bits())); err != nil {
		return nil, err
	}
	if err := n.sysctls(map[string]string{
		"ipv4/ip_forward":                "1",
		"ipv4/conf/all/send_redirects":   "0",
		"ipv4/conf/br0/send_redirects":   "0",
		"ipv4/conf/all/accept_redirects": "0",
	}); err != nil {
		return nil, err
	}
	n.addrs = []netip.Addr{gw}
	n.prefix = internetPrefix
	return &Internet{Node: n, seg: seg}, nil
}

// newNodeLocked makes the namespace of a node, with lo up and IPv6 off.
func (l *Lab) newNodeLocked(name string) (*Node, error) {
	if l.closed {
		return nil, ErrClosed
	}
	if !nameRE.MatchString(name) {
		return nil, fmt.Errorf("%w: node %q", ErrBadName, name)
	}
	if l.names[name] {
		return nil, fmt.Errorf("%w: node %q", ErrExists, name)
	}
	nsName := Prefix + l.id + "-" + name
	ns, err := nsthread.New(nsName)
	if err != nil {
		return nil, fmt.Errorf("create namespace %s: %w", nsName, err)
	}
	n := &Node{lab: l, name: name, nsName: nsName, ns: ns}
	l.names[name] = true
	l.nodes = append(l.nodes, n)
	if n.nl, err = netlink.NewHandleAt(ns); err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", nsName, err)
	}
	lo, err := n.nl.LinkByName("lo")
	if err == nil {
		err = n.nl.LinkSetUp(lo)
	}
	if err != nil {
		return nil, fmt.Errorf("lo up in %s: %w", nsName, err)
	}
	err = n.sysctls(map[string]string{
		"ipv6/conf/all/disable_ipv6":     "1",
		"ipv6/conf/default/disable_ipv6": "1",
		// A lost ARP request costs 100 ms, not a second.
		"ipv4/neigh/default/retrans_time_ms": "100",
		// Bridged frames must not cross this namespace's IP hooks.
		"bridge/bridge-nf-call-iptables": "0",
	})
	return n, err
}

// attachLocked links n to seg with a veth pair: "eth0" in n, "vN" in the
// gateway's bridge; gives n count addresses and a default route.
func (l *Lab) attachLocked(n *Node, seg *segment, count int) error {
	addrs, err := seg.alloc(count)
	if err != nil {
		return err
	}
	l.nextIf++
	peer := fmt.Sprintf("v%d", l.nextIf)
	gw := seg.gw
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: peer, TxQLen: 1000},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(n.ns)),
	}
	if err := gw.nl.LinkAdd(veth); err != nil {
		return fmt.Errorf("veth %s/%s-%s/eth0: %w", gw.name, peer, n.name, err)
	}
	pl, err := gw.nl.LinkByName(peer)
	if err != nil {
		return err
	}
	br, err := gw.nl.LinkByName("br0")
	if err != nil {
		return err
	}
	if err := gw.nl.LinkSetMaster(pl, br); err != nil {
		return err
	}
	if err := gw.nl.LinkSetUp(pl); err != nil {
		return err
	}
	eth, err := n.nl.LinkByName("eth0")
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if err := n.nl.AddrAdd(eth, nlAddr(netip.PrefixFrom(a, seg.prefix.Bits()))); err != nil {
			return fmt.Errorf("address %s on %s: %w", a, n.name, err)
		}
	}
	if err := n.nl.LinkSetUp(eth); err != nil {
		return err
	}
	if err := n.nl.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: seg.gwAddr.AsSlice()}); err != nil {
		return fmt.Errorf("default route of %s: %w", n.name, err)
	}
	n.addrs = addrs
	n.prefix = seg.prefix
	n.gateway = seg.gwAddr
	n.link = &Link{node: n, gw: gw, peer: peer}
	// The bridge forwards through a port only once the kernel's link
	// watcher has seen its carrier: wait for that, or the first ARP
	// requests vanish and traffic stalls for a retransmission.
	return waitOperUp(gw.nl, peer, n.nl, "eth0")
}

func waitOperUp(h1 *netlink.Handle, if1 string, h2 *netlink.Handle, if2 string) error {
	deadline := time.Now().Add(3 * time.Second)
	for {
		up := true
		for _, c := range []struct {
			h    *netlink.Handle
			name string
		}{{h1, if1}, {h2, if2}} {
			l, err := c.h.LinkByName(c.name)
			if err != nil {
				return err
			}
			up = up && l.Attrs().OperState == netlink.OperUp
		}
		if up {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("links %s and %s not up after 3s", if1, if2)
		}
		time.Sleep(time.Millisecond)
	}
}

func nlAddr(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
}

// namespaces lists the named namespaces whose names start with prefix.
func namespaces(prefix string) ([]string, error) {
	ents, err := os.ReadDir(nsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
