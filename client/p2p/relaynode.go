package p2p

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/traverse-rtc/traverse/internal/relaynode"
	"github.com/traverse-rtc/traverse/internal/signal/p2pwire"
)

// Step 2 of the path sequence: a relay node both peers reach (docs/p2p.md,
// docs/relay.md). After the direct timeout, once both NAT reports are known,
// the initiator asks signaling for relay nodes compatible with both peers'
// NATs, nearest first (RelayNodeFunc; SignalRelayNodes POSTs /relay/nodes),
// sends the peer its grants in a "relay" message, and both bind the nodes
// in the offer's order from the direct socket (relaynode.BindFirst): the
// first node both reach carries the flow as a PathRelayNode base. TURN is
// tried only when no node worked.

// RelayNodeFunc asks signaling for relay nodes for this pair (the JSON of
// signal's POST /relay/nodes).
type RelayNodeFunc func(ctx context.Context, req RelayNodeRequest) (RelayNodeOffer, error)

// RelayNodeRequest is the body of signal's POST /relay/nodes: Self is the
// caller (side 0 of every grant), Other the peer named Peer (side 1).
type RelayNodeRequest struct {
	Peer  string        `json:"peer"`
	Self  RelayNodePeer `json:"self"`
	Other RelayNodePeer `json:"other"`
}

// RelayNodePeer describes one peer to signaling's relay choice.
type RelayNodePeer struct {
	NAT    RelayNodeNAT `json:"nat"`
	Region string       `json:"region,omitempty"`
	// Addrs are the peer's server-reflexive addresses (the node punches
	// to them when its filter is address-dependent).
	Addrs []string `json:"addrs,omitempty"`
}

// RelayNodeNAT is a peer's NAT as client/nat found it.
type RelayNodeNAT = p2pwire.RelayNAT

// RelayNodeOffer is signal's answer: the nodes to try in order, each with
// a grant per side (base64url, unpadded).
type RelayNodeOffer struct {
	Session string               `json:"session"`
	Nodes   []RelayNodeOfferNode `json:"nodes"`
}

// RelayNodeOfferNode is one offered node.
type RelayNodeOfferNode = p2pwire.RelayOfferNode

// relayMsg is the "relay" signaling message: the nodes, in the order
// both peers try them, with the receiver's grants.
type relayMsg struct {
	Nodes []relayMsgNode `json:"n"`
}

type relayMsgNode struct {
	ID    string         `json:"id"`
	Addr  netip.AddrPort `json:"a"`
	Grant []byte         `json:"g"`
}

// Limits of a relay message.
const (
	maxRelayNodes = 8
	maxGrant      = 256
	maxNodeID     = 64
	// relayPerNode bounds each node's bind (both peers bound) before the
	// next is tried: relaynode.BindFirst's per.
	relayPerNode = 1500 * time.Millisecond
	// relayNATWait bounds the wait for both NAT reports after the direct
	// timeout; relayOfferWait the responder's wait for the offer.
	relayNATWait   = 2 * time.Second
	relayOfferWait = 4 * time.Second
	// maxRelayAnswer bounds signal's HTTP answer.
	maxRelayAnswer = 64 << 10
)

func (r *relayMsg) validate() error {
	if r == nil || len(r.Nodes) > maxRelayNodes {
		return fmt.Errorf("%w: bad relay offer", ErrSignal)
	}
	for _, n := range r.Nodes {
		a := n.Addr.Addr()
		if len(n.ID) > maxNodeID || len(n.Grant) == 0 || len(n.Grant) > maxGrant || !n.Addr.IsValid() ||
			n.Addr.Port() == 0 || a.IsUnspecified() || a.IsMulticast() {
			return fmt.Errorf("%w: bad relay node %.16q", ErrSignal, n.ID)
		}
	}
	return nil
}

// WithRelayNodes turns step 2 on: f finds relay nodes (SignalRelayNodes
// asks the signaling service). The initiator calls f; the responder needs
// the option too (any f), so that it waits for the initiator's offer
// before TURN. Default off: without it the sequence is direct, then TURN.
func WithRelayNodes(f RelayNodeFunc) Option {
	return func(o *options) error {
		if f == nil {
			return fmt.Errorf("%w: nil RelayNodeFunc", ErrConfig)
		}
		o.relayNodes = f
		return nil
	}
}

// WithRegion is this peer's region, matched against relay nodes' (nearest
// first). Default none.
func WithRegion(region string) Option {
	return func(o *options) error { o.region = region; return nil }
}

// SignalRelayNodes asks the signaling service at base (http(s)://host:port,
// the same server as the /p2p rendezvous) with token: POST /relay/nodes.
// hc nil means http.DefaultClient.
func SignalRelayNodes(base, token string, hc *http.Client) RelayNodeFunc {
	if hc == nil {
		hc = http.DefaultClient
	}
	base = strings.TrimSuffix(strings.TrimSuffix(base, "/p2p"), "/")
	base = strings.Replace(strings.Replace(base, "ws://", "http://", 1), "wss://", "https://", 1)
	return func(ctx context.Context, req RelayNodeRequest) (RelayNodeOffer, error) {
		var off RelayNodeOffer
		body, _ := json.Marshal(req)
		hr, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/relay/nodes", bytes.NewReader(body))
		if err != nil {
			return off, err
		}
		hr.Header.Set("Authorization", "Bearer "+token)
		hr.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(hr)
		if err != nil {
			return off, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxRelayAnswer+1))
		if err != nil {
			return off, err
		}
		if resp.StatusCode != http.StatusOK {
			return off, fmt.Errorf("p2p: relay nodes: %s: %.200s", resp.Status, b)
		}
		if len(b) > maxRelayAnswer {
			return off, fmt.Errorf("p2p: relay nodes: answer over %d bytes", maxRelayAnswer)
		}
		if err := json.Unmarshal(b, &off); err != nil {
			return off, fmt.Errorf("p2p: relay nodes: %w", err)
		}
		return off, nil
	}
}

// relayBase is a bound relay-node link: one more base.
type relayBase struct{ *relaynode.Link }

func (relayBase) Kind() PathKind { return PathRelayNode }

// subConn is a net.PacketConn carved out of the direct socket: the
// datagrams from the addresses it claims (relay nodes being bound) go to it
// instead of the Conn, and it writes from the direct socket, so that a
// node sees the same public address the peers exchanged (an
// address-and-port-dependent node punched exactly that one).
type subConn struct {
	ub       *udpBase
	addrs    map[netip.AddrPort]bool
	ch       chan []byte
	from     chan netip.AddrPort
	done     chan struct{}
	once     sync.Once
	mu       sync.Mutex // guards deadline
	deadline time.Time
	owner    *atomic.Pointer[subConn]
}

func newSubConn(ub *udpBase, owner *atomic.Pointer[subConn], addrs []netip.AddrPort) *subConn {
	s := &subConn{ub: ub, addrs: map[netip.AddrPort]bool{}, ch: make(chan []byte, 256), from: make(chan netip.AddrPort, 256),
		done: make(chan struct{}), owner: owner}
	for _, a := range addrs {
		s.addrs[a] = true
	}
	owner.Store(s)
	return s
}

// push hands a datagram from one of s's addresses over; false when not s's.
func (s *subConn) push(from netip.AddrPort, p []byte) bool {
	if !s.addrs[from] {
		return false
	}
	select {
	case s.ch <- append([]byte(nil), p...):
		s.from <- from
	default: // the reader is slow: drop, as a socket would
	}
	return true
}

func (s *subConn) ReadFrom(p []byte) (int, net.Addr, error) {
	s.mu.Lock()
	d := s.deadline
	s.mu.Unlock()
	var timeout <-chan time.Time
	if !d.IsZero() {
		t := time.NewTimer(time.Until(d))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case b := <-s.ch:
		from := <-s.from
		return copy(p, b), net.UDPAddrFromAddrPort(from), nil
	case <-s.done:
		return 0, nil, net.ErrClosed
	case <-timeout:
		return 0, nil, os.ErrDeadlineExceeded
	}
}

func (s *subConn) WriteTo(p []byte, to net.Addr) (int, error) {
	select {
	case <-s.done:
		return 0, net.ErrClosed
	default:
	}
	return len(p), s.ub.WriteTo(p, addrPortOf(to))
}

func (s *subConn) Close() error {
	s.once.Do(func() {
		close(s.done)
		s.owner.CompareAndSwap(s, nil)
	})
	return nil
}

func (s *subConn) LocalAddr() net.Addr { return s.ub.pc.LocalAddr() }
func (s *subConn) SetDeadline(t time.Time) error {
	return s.SetReadDeadline(t)
}
func (s *subConn) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	s.deadline = t
	s.mu.Unlock()
	return nil
}
func (s *subConn) SetWriteDeadline(time.Time) error { return nil }

// relayNATs returns both NAT reports for the request.
func relayNAT(n *NATInfo) RelayNodeNAT {
	var r RelayNodeNAT
	if n == nil {
		return r
	}
	r.NAT, r.UDPBlocked = n.Behind, n.UDPBlocked
	_ = r.Mapping.UnmarshalText([]byte(n.Mapping))
	_ = r.Filtering.UnmarshalText([]byte(n.Filtering))
	return r
}

// relayOffer is the initiator's step 2: wait for both NAT reports, ask
// for nodes, hand the peer its grants and bind.
func (c *Conn) relayOffer() {
	defer c.wg.Done()
	if c.udpBlocked.Load() {
		// No node is reachable without UDP: an empty offer sends the
		// peer on to TURN at once.
		_ = c.sig.Send(c.ctx, encodeMessage(message{Type: "relay", Relay: &relayMsg{}}))
		c.relayFinished()
		return
	}
	deadline := time.Now().Add(relayNATWait)
	for time.Now().Before(deadline) && c.ctx.Err() == nil {
		c.mu.Lock()
		ready := c.remoteNAT != nil && (c.localNAT != nil || c.quick != nil)
		c.mu.Unlock()
		if ready {
			break
		}
		select {
		case <-c.ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	c.mu.Lock()
	local := c.localNAT
	if local == nil || local.Mapping == "" {
		local = c.quick
	}
	req := RelayNodeRequest{Peer: c.peer, Self: RelayNodePeer{NAT: relayNAT(local), Region: c.o.region},
		Other: RelayNodePeer{NAT: relayNAT(c.remoteNAT)}}
	if c.srflx.IsValid() {
		req.Self.Addrs = []string{c.srflx.String()}
	}
	for _, r := range c.remotes {
		if r.Kind == "srflx" && r.Seq == 0 && len(req.Other.Addrs) < 4 {
			req.Other.Addrs = append(req.Other.Addrs, r.Addr.String())
		}
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(c.ctx, 3*time.Second)
	off, err := c.o.relayNodes(ctx, req)
	cancel()
	if err != nil {
		c.o.log.Info("p2p: relay nodes", "err", err)
	}
	var mine, theirs []relayMsgNode
	for _, n := range off.Nodes {
		a, aerr := netip.ParseAddrPort(n.Addr)
		g0, e0 := base64.RawURLEncoding.DecodeString(n.Grants[0])
		g1, e1 := base64.RawURLEncoding.DecodeString(n.Grants[1])
		if aerr != nil || e0 != nil || e1 != nil || len(mine) == maxRelayNodes {
			continue
		}
		a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
		mine = append(mine, relayMsgNode{ID: n.ID, Addr: a, Grant: g0})
		theirs = append(theirs, relayMsgNode{ID: n.ID, Addr: a, Grant: g1})
	}
	c.c.relayOffered.Store(uint64(len(mine)))
	// Sent even empty: the peer then goes on to TURN at once.
	_ = c.sig.Send(c.ctx, encodeMessage(message{Type: "relay", Relay: &relayMsg{Nodes: theirs}}))
	c.bindRelay(mine)
}

// bindRelay binds the nodes in order from the direct socket; the first
// both peers reach becomes a base. Either way step 2 ends.
func (c *Conn) bindRelay(nodes []relayMsgNode) {
	defer c.relayFinished()
	if len(nodes) == 0 || c.ctx.Err() != nil {
		return
	}
	c.mu.Lock()
	ub, _ := c.bases[0].(*udpBase)
	c.mu.Unlock()
	if ub == nil {
		return
	}
	var addrs []netip.AddrPort
	offers := make([]relaynode.Offer, len(nodes))
	for i, n := range nodes {
		addrs = append(addrs, n.Addr)
		offers[i] = relaynode.Offer{Node: n.ID, Addr: n.Addr, Grant: n.Grant}
	}
	listen := func() (net.PacketConn, error) { return newSubConn(ub, &c.sub, addrs), nil }
	link, i, err := relaynode.BindFirst(c.ctx, listen, offers, relayPerNode)
	if err != nil {
		c.o.log.Info("p2p: no relay node reached", "err", err)
		return
	}
	c.c.relayTried.Store(uint64(i + 1))
	c.o.log.Info("p2p: relay node bound", "node", nodes[i].ID, "addr", nodes[i].Addr)
	c.mu.Lock()
	c.relayUp = time.Now()
	c.mu.Unlock()
	c.addBase(relayBase{link}, Candidate{Addr: nodes[i].Addr, Kind: "relay-node"})
}

func (c *Conn) relayFinished() {
	c.mu.Lock()
	c.relayDone = true
	c.mu.Unlock()
}

// RelayNodeStats says what step 2 did: nodes offered, and the 1-based
// position of the node that carried the session (0: none).
func (c *Conn) RelayNodeStats() (offered, used int) {
	return int(c.c.relayOffered.Load()), int(c.c.relayTried.Load())
}
