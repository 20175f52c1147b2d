package p2plab

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/client/nat"
	"github.com/traverse-rtc/traverse/client/p2p"
	"github.com/traverse-rtc/traverse/client/portmap"
	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/netlab"
	"github.com/traverse-rtc/traverse/internal/relaynode"
	"github.com/traverse-rtc/traverse/internal/signal"
)

// Extras are what a matrix may add to the bare NATs: relay nodes on the
// lab internet (step 2 of the path sequence) and Debian's miniupnpd on
// NATs (a port mapping as one more direct candidate).
type Extras struct {
	// RelayNodes starts this many relay nodes, each a host routed on the
	// lab internet (no NAT: every peer that is not UDP-blocked reaches
	// it), announced on an embedded bus to signal's relay service; peers
	// ask it for nodes (p2p.WithRelayNodes). Node i is in region
	// "lab-i"; peers are in "lab-0", so node 0 is the nearest.
	RelayNodes int
	// Miniupnpd lists the NAT kinds whose NATs run miniupnpd (both
	// sides); "all" means every single NAT (not none, udp-blocked or
	// double: a double NAT's inner router would map an address the lab
	// internet cannot route). Peers behind them ask for a mapping
	// (p2p.WithPortMap).
	Miniupnpd []string
}

// Region is the peers' region in the lab (node 0's).
const Region = "lab-0"

// UPnPKinds are the kinds Extras.Miniupnpd "all" names.
var UPnPKinds = []string{"eim-eif", "eim-adf", "eim-apdf", "symmetric-seq", "symmetric-random"}

type relayScene struct {
	emb   *bus.Embedded
	rs    *signal.RelayService
	nodes []*relaynode.Node
	hosts []*netlab.Host
}

// BuildWith builds the lab for kinds with x's relay nodes (their hosts;
// StartExtras starts them once the servers run) and miniupnpd on the
// NATs x names.
func BuildWith(l *netlab.Lab, kinds []string, x Extras) (*Env, error) {
	e, err := buildHosts(l, kinds)
	if err != nil {
		return e, err
	}
	e.extras = x
	upnp := map[string]bool{}
	for _, k := range x.Miniupnpd {
		if k == "all" {
			for _, u := range UPnPKinds {
				upnp[u] = true
			}
			continue
		}
		upnp[k] = true
	}
	i := 0
	for _, sd := range []string{"a", "b"} {
		for _, k := range kinds {
			s := e.hosts[sd+"/"+k]
			if !upnp[k] || s.nat == nil {
				continue
			}
			i++
			ext := netip.AddrFrom4([4]byte{192, 0, 3, byte(i)})
			d, err := s.nat.StartMiniupnpd(ext)
			if err != nil {
				return e, err
			}
			e.closers = append(e.closers, func() { d.Close() })
			s.upnp = true
		}
	}
	for i := range x.RelayNodes {
		e.relayHosts = append(e.relayHosts, l.Host(fmt.Sprintf("relay%d", i), l.Internet()))
	}
	return e, l.Err()
}

// StartExtras starts the relay nodes (after StartServers: they learn
// their NAT from the lab's STUN server) and waits until signal offers
// them.
func (e *Env) StartExtras() error {
	if len(e.relayHosts) == 0 {
		return nil
	}
	emb, err := bus.StartEmbedded(bus.EmbeddedConfig{Listen: "127.0.0.1:0"})
	if err != nil {
		return err
	}
	e.relay = &relayScene{emb: emb}
	connect := func(role bus.Role, node string) (*bus.Client, error) {
		id, err := emb.NewIdentity(role, node)
		if err != nil {
			return nil, err
		}
		return bus.Connect(bus.Config{URLs: []string{emb.URL()}, Identity: id}, nil)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	sb, err := connect(bus.RoleSignal, "")
	if err != nil {
		return err
	}
	e.closers = append(e.closers, func() { sb.Close() })
	e.relay.rs, err = signal.NewRelayService(signal.RelayConfig{Bus: sb, TokenKey: []byte("0123456789abcdef"), GrantKey: priv,
		Registerer: prometheus.NewRegistry()})
	if err != nil {
		return err
	}
	stunAddr := netip.AddrPortFrom(e.srv.Addrs()[0], stunPort).String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	e.closers = append(e.closers, func() { cancel(); <-done })
	var runs []func(context.Context) error
	for i, h := range e.relayHosts {
		id := fmt.Sprintf("node%d", i)
		bc, err := connect(bus.RoleRelay, id)
		if err != nil {
			cancel()
			close(done)
			return err
		}
		e.closers = append(e.closers, func() { bc.Close() })
		cfg := relaynode.Config{ID: id, Region: fmt.Sprintf("lab-%d", i), Listen: netip.AddrPortFrom(h.Addr(), relaynode.DefaultListenPort),
			STUN: []string{stunAddr}, GrantKey: pub, DiscoverRTO: 30 * time.Millisecond, BusClient: bc, Registerer: prometheus.NewRegistry()}
		var n *relaynode.Node
		if err := h.Do(func() error { n, err = relaynode.New(cfg); return err }); err != nil {
			cancel()
			close(done)
			return err
		}
		e.relay.nodes = append(e.relay.nodes, n)
		runs = append(runs, n.Run)
	}
	errc := make(chan error, len(runs))
	for _, r := range runs {
		go func() { errc <- r(ctx) }()
	}
	go func() {
		for range runs {
			<-errc
		}
		for _, n := range e.relay.nodes {
			n.Close()
		}
		close(done)
	}()
	// Signal knows every node once an open peer is offered all of them.
	open := signal.RelayPeer{Region: Region, NAT: signal.RelayNAT{Mapping: nat.EndpointIndependent, Filtering: nat.EndpointIndependent}}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		o, _ := e.relay.rs.Offer(signal.RelayRequest{Peer: "x", Self: open, Other: open})
		if len(o.Nodes) == len(e.relayHosts) {
			return nil
		}
		time.Sleep(50 * time.Millisecond) // polling signal's view; no event to wait on
	}
	return errors.New("p2plab: relay nodes not offered after 20s")
}

// relayNodes is the peers' p2p.RelayNodeFunc: signal's relay service in
// this process (its HTTP handler is signal's own test's business), through
// the same JSON.
func (e *Env) relayNodes(ctx context.Context, req p2p.RelayNodeRequest) (p2p.RelayNodeOffer, error) {
	var out p2p.RelayNodeOffer
	b, _ := json.Marshal(req)
	r, err := signal.ParseRelayRequest(b)
	if err != nil {
		return out, err
	}
	off, err := e.relay.rs.Offer(r)
	if err != nil {
		return out, err
	}
	b, _ = json.Marshal(off)
	err = json.Unmarshal(b, &out)
	return out, err
}

// BlockRelayNode makes relay node i unreachable from the host of side
// ("a" or "b") and kind: its NAT drops UDP to the node (a firewall).
func (e *Env) BlockRelayNode(side, kind string, i int) error {
	s := e.hosts[side+"/"+kind]
	if s == nil || s.nat == nil || i >= len(e.relayHosts) {
		return fmt.Errorf("p2plab: no NAT for %s/%s or no node %d", side, kind, i)
	}
	rules := fmt.Sprintf("table inet p2plab-block { chain f { type filter hook forward priority -10; ip daddr %s udp dport %d drop; }; }",
		e.relayHosts[i].Addr(), relaynode.DefaultListenPort)
	if out, err := s.nat.Command("nft", rules).CombinedOutput(); err != nil {
		return fmt.Errorf("p2plab: nft: %v: %s", err, out)
	}
	return nil
}

// RelayNode returns relay node i.
func (e *Env) RelayNode(i int) *relaynode.Node { return e.relay.nodes[i] }

// extraOptions are a side's options for x.
func (e *Env) extraOptions(s *side) []p2p.Option {
	var opts []p2p.Option
	if e.relay != nil {
		opts = append(opts, p2p.WithRelayNodes(e.relayNodes), p2p.WithRegion(Region))
	}
	if s.upnp {
		h := s.host
		opts = append(opts, p2p.WithPortMap(portmap.Config{Gateway: h.Gateway(), ListenUDP: h.ListenUDP,
			Dial: func(ctx context.Context, network, addr string) (net.Conn, error) { return h.Dial(network, addr) }}))
	}
	return opts
}

// expect is the path a pair should take with e's extras: a port mapping
// on either side opens the direct path (the other side's probes reach the
// mapped port whatever its NAT, and the answers leave through the
// mapping); relay nodes carry what would go to TURN over UDP.
func (e *Env) expect(a, b string) p2p.PathKind {
	k := Expect(a, b)
	if k == p2p.PathDirect || k == p2p.PathTURNTCP {
		return k
	}
	if e.hosts["a/"+a].upnp || e.hosts["b/"+b].upnp {
		return p2p.PathDirect
	}
	if e.extras.RelayNodes > 0 {
		return p2p.PathRelayNode
	}
	return k
}
