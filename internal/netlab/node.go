package netlab

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"

	"github.com/traverse-rtc/traverse/internal/nsthread"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Node is one network namespace of a lab: a host, a NAT or the internet.
type Node struct {
	lab     *Lab
	name    string
	nsName  string
	ns      netns.NsHandle
	nl      *netlink.Handle // netlink socket inside ns
	addrs   []netip.Addr    // on eth0 (br0 for the internet)
	prefix  netip.Prefix    // eth0's network
	gateway netip.Addr
	link    *Link // to the network the node is attached to; nil for the internet
}

// Name is the node's name within its lab.
func (n *Node) Name() string { return n.name }

// Namespace is the name of the node's network namespace ("ip netns exec
// NAME ..." enters it).
func (n *Node) Namespace() string { return n.nsName }

// Path is the file that pins the node's namespace (for nsenter --net=).
func (n *Node) Path() string { return filepath.Join(nsDir, n.nsName) }

// Addr is the node's first address on the network it is attached to; for a
// NAT, the address its mappings use.
func (n *Node) Addr() netip.Addr {
	if len(n.addrs) == 0 {
		return netip.Addr{}
	}
	return n.addrs[0]
}

// Addrs are all of the node's addresses on the network it is attached to.
func (n *Node) Addrs() []netip.Addr { return append([]netip.Addr(nil), n.addrs...) }

// Gateway is the address of the node's default router.
func (n *Node) Gateway() netip.Addr { return n.gateway }

// Link is the node's link to its network (nil for the internet).
func (n *Node) Link() *Link { return n.link }

// Do runs fn on the calling goroutine with its OS thread moved into the
// node's namespace, then moves the thread back. Sockets fn opens stay in the
// namespace for their whole life, wherever they are used later; goroutines
// fn starts do NOT run in the namespace.
func (n *Node) Do(fn func() error) error {
	return nsthread.Do(n.ns, fn)
}

// Command returns a command that runs name inside the node's namespace
// (through nsenter, so it may be started from any goroutine). Closing the
// lab kills it if it still runs; the caller still Waits for it.
func (n *Node) Command(name string, args ...string) *exec.Cmd {
	w := n.Wrap()
	return exec.CommandContext(n.lab.ctx, w[0], append(append(w[1:], name), args...)...)
}

// Wrap is the command prefix that runs what follows it in the node's
// namespace, in place ("nsenter --net=PATH --": the PID is the command's).
func (n *Node) Wrap() []string { return []string{"nsenter", "--net=" + n.Path(), "--"} }

// ListenUDP opens a UDP socket in the node's namespace (addr may be the
// zero AddrPort: any address, a free port).
func (n *Node) ListenUDP(addr netip.AddrPort) (*net.UDPConn, error) {
	return open(n, func() (*net.UDPConn, error) { return net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr)) })
}

// Listen opens a listener (net.Listen) in the node's namespace.
func (n *Node) Listen(network, address string) (net.Listener, error) {
	return open(n, func() (net.Listener, error) { return net.Listen(network, address) })
}

// Dial connects (net.Dial) from the node's namespace.
func (n *Node) Dial(network, address string) (net.Conn, error) {
	return open(n, func() (net.Conn, error) { return net.Dial(network, address) })
}

// open runs f (which opens a socket) in n's namespace and returns what it
// opened: a socket keeps the namespace it was made in.
func open[T any](n *Node, f func() (T, error)) (T, error) {
	var v T
	err := n.Do(func() error {
		var err error
		v, err = f()
		return err
	})
	return v, err
}

// sysctls writes /proc/sys/net/KEY = value inside the namespace; keys whose
// file does not exist (a module not loaded) are skipped.
func (n *Node) sysctls(kv map[string]string) error {
	keys := slices.Sorted(maps.Keys(kv))
	return n.Do(func() error {
		for _, k := range keys {
			err := os.WriteFile("/proc/sys/net/"+k, []byte(kv[k]), 0o644)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("sysctl net/%s in %s: %w", k, n.nsName, err)
			}
		}
		return nil
	})
}

// addBridge creates "br0" with address a in the node.
func (n *Node) addBridge(a netip.Prefix) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := n.nl.LinkAdd(br); err != nil {
		return fmt.Errorf("bridge in %s: %w", n.nsName, err)
	}
	if err := n.nl.AddrAdd(br, nlAddr(a)); err != nil {
		return err
	}
	return n.nl.LinkSetUp(br)
}

func (n *Node) close() error {
	if n.nl != nil {
		n.nl.Close()
	}
	if n.ns.IsOpen() {
		n.ns.Close()
	}
	if n.nsName == "" {
		return nil
	}
	if err := netns.DeleteNamed(n.nsName); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete namespace %s: %w", n.nsName, err)
	}
	return nil
}
