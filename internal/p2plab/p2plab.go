// Package p2plab runs client/p2p between hosts behind every pair of NAT
// kinds in a netlab lab (real kernels, nftables NATs) and measures what
// the issue asks: the path chosen, the time to the first media packet and
// the success rate (Matrix); and the move from TURN to direct once a
// blocked direct path opens (Upgrade). "traverse lab matrix" and its CI
// test use it; docs/p2p.md has the compatibility rule Expect encodes.
package p2plab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/traverse-rtc/traverse/client/nat"
	"github.com/traverse-rtc/traverse/client/p2p"
	"github.com/traverse-rtc/traverse/internal/netlab"
)

// Kinds are the matrix's host situations, in table order.
var Kinds = []string{"none", "eim-eif", "eim-adf", "eim-apdf", "symmetric-seq", "symmetric-random", "udp-blocked", "double"}

var natKinds = map[string]netlab.Kind{
	"none": netlab.Routed, "eim-eif": netlab.EIMEIF, "eim-adf": netlab.EIMADF, "eim-apdf": netlab.EIMAPDF,
	"symmetric-seq": netlab.SymmetricSequential, "symmetric-random": netlab.SymmetricRandom, "udp-blocked": netlab.BlockUDP,
}

var short = map[string]string{"none": "none", "eim-eif": "eif", "eim-adf": "adf", "eim-apdf": "apdf",
	"symmetric-seq": "symseq", "symmetric-random": "symrand", "udp-blocked": "blocked", "double": "double"}

// Expect is the path RFC 4787 theory gives a pair, the rule docs/p2p.md
// states: a UDP-blocked side needs TURN over TCP; otherwise direct works
// unless a side maps address-and-port-dependently (symmetric) and the
// other filters by port (APDF) or maps symmetrically too: its probes then
// leave from a port the other's filter has never sent to - except that a
// sequential symmetric NAT's next ports can be predicted, which opens it to
// an EIM peer. A double NAT behaves as its outer (EIM-ADF) NAT.
func Expect(a, b string) p2p.PathKind {
	if a == "udp-blocked" || b == "udp-blocked" {
		return p2p.PathTURNTCP
	}
	sym := func(k string) bool { return strings.HasPrefix(k, "symmetric") }
	portFilter := func(k string) bool { return k == "eim-apdf" || sym(k) }
	if (sym(a) && portFilter(b)) || (sym(b) && portFilter(a)) {
		// Port prediction: an EIM peer probes the ports a sequential
		// NAT hands out next, one of which is the mapping towards it.
		if (a == "symmetric-seq" && b == "eim-apdf") || (b == "symmetric-seq" && a == "eim-apdf") {
			return p2p.PathDirect
		}
		return p2p.PathTURNUDP
	}
	return p2p.PathDirect
}

// Server addresses inside the lab.
const (
	stunPort = 3478
	turnPort = 3490 // the STUN server takes 3478 and 3479 (RFC 5780 alternate port)
	tlsPort  = 443
	turnUser = "lab"
	turnPass = "lab-pass"
	realm    = "lab"
)

// Env is a built lab: a server host (STUN, TURN) and, for each side (a,
// b) and kind, a host behind a NAT of that kind.
type Env struct {
	lab    *netlab.Lab
	srv    *netlab.Host
	hosts  map[string]*side // "a/eim-eif"
	helper *exec.Cmd
	stdin  io.Closer
	exited chan error

	extras     Extras
	relayHosts []*netlab.Host
	relay      *relayScene
	closers    []func()
}

type side struct {
	host   *netlab.Host
	public netip.Addr  // what peers see of it
	nat    *netlab.NAT // its NAT (the inner one of a double NAT), nil for none
	upnp   bool        // its NAT runs miniupnpd
}

// Build builds the lab for kinds in l.
func Build(l *netlab.Lab, kinds []string) (*Env, error) {
	return BuildWith(l, kinds, Extras{})
}

func buildHosts(l *netlab.Lab, kinds []string) (*Env, error) {
	e := &Env{lab: l, hosts: map[string]*side{}}
	e.srv = l.Host("srv", l.Internet(), netlab.Addrs(2))
	for _, sd := range []string{"a", "b"} {
		for _, k := range kinds {
			name := sd + short[k]
			if k == "double" {
				cgn := l.NAT(sd+"cgn", l.Internet(), netlab.EIMADF)
				home := l.NAT(sd+"home", cgn, netlab.EIMEIF)
				e.hosts[sd+"/"+k] = &side{host: l.Host("h"+name, home), public: cgn.Addr(), nat: home}
				continue
			}
			nk, ok := natKinds[k]
			if !ok {
				return nil, fmt.Errorf("p2plab: unknown kind %q", k)
			}
			n := l.NAT(name, l.Internet(), nk)
			h := l.Host("h"+name, n)
			pub := n.Addr()
			if nk == netlab.Routed {
				pub = h.Addr()
			}
			s := &side{host: h, public: pub}
			if nk != netlab.Routed {
				s.nat = n
			}
			e.hosts[sd+"/"+k] = s
		}
	}
	if err := l.Err(); err != nil {
		return nil, err
	}
	return e, nil
}

// HelperEnv names the environment variable that makes a process serve the
// lab's STUN and TURN servers (ServeHelper) instead of its usual work.
const HelperEnv = "TRAVERSE_P2PLAB_HELPER"

// StartServers runs cmd (this program re-executed so that it calls
// ServeHelper) in the server host's namespace and waits until it serves.
func (e *Env) StartServers(cmd *exec.Cmd) error {
	a := e.srv.Addrs()
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%s", HelperEnv, a[0], a[1]))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	// Forked from a thread in the namespace, the child lives there.
	if err := e.srv.Do(cmd.Start); err != nil {
		return err
	}
	e.helper, e.stdin = cmd, stdin
	e.exited = make(chan error, 1)
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
		_, _ = io.Copy(io.Discard, stdout)
		e.exited <- cmd.Wait()
	}()
	select {
	case line := <-ready:
		if strings.TrimSpace(line) != "ready" {
			return fmt.Errorf("p2plab: server helper: %q", line)
		}
		return nil
	case <-time.After(20 * time.Second):
		return errors.New("p2plab: server helper not ready after 20s")
	}
}

// Close stops the relay nodes and the server helper (the lab is the
// caller's).
func (e *Env) Close() error {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
	e.closers = nil
	if e.relay != nil {
		e.relay.emb.Close()
		e.relay = nil
	}
	if e.helper == nil {
		return nil
	}
	e.stdin.Close()
	select {
	case err := <-e.exited:
		return err
	case <-time.After(10 * time.Second):
		_ = e.helper.Process.Kill()
		return <-e.exited
	}
}

// nodeNet opens a peer's sockets in its namespace.
type nodeNet struct{ n *netlab.Host }

func (n nodeNet) ListenUDP(local netip.AddrPort) (net.PacketConn, error) { return n.n.ListenUDP(local) }
func (n nodeNet) Dial(_ context.Context, network, address string) (net.Conn, error) {
	return n.n.Dial(network, address)
}
func (n nodeNet) InterfaceAddrs() ([]netip.Addr, error) { return n.n.Addrs(), nil }

func (e *Env) options(h *netlab.Host, extra []p2p.Option) []p2p.Option {
	a := e.srv.Addrs()
	stunAddr := netip.AddrPortFrom(a[0], stunPort).String()
	turnUDP := netip.AddrPortFrom(a[0], turnPort).String()
	tls := netip.AddrPortFrom(a[0], tlsPort).String()
	opts := []p2p.Option{
		p2p.WithNetwork(nodeNet{h}),
		p2p.WithSTUN(stunAddr),
		p2p.WithNATDiscovery(func(ctx context.Context) (rep nat.Report, err error) {
			derr := h.Do(func() error {
				rep, err = nat.Discover(ctx, nat.Config{Server: stunAddr, RTO: 100 * time.Millisecond, Attempts: 3})
				return nil
			})
			return rep, errors.Join(err, derr)
		}),
		p2p.WithTURN(
			p2p.TURNServer{Addr: turnUDP, Transport: "udp", Username: turnUser, Password: turnPass, Realm: realm},
			p2p.TURNServer{Addr: turnUDP, Transport: "tcp", Username: turnUser, Password: turnPass, Realm: realm},
			p2p.TURNServer{Addr: tls, Transport: "tls", Username: turnUser, Password: turnPass, Realm: realm, InsecureSkipVerify: true}),
	}
	return append(opts, extra...)
}
