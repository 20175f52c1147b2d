package p2p

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flynn/noise"
	"github.com/pion/stun/v3"

	"github.com/traverse-rtc/traverse/client/nat"
)

// Conn is a connection to one peer carrying datagrams, end-to-end
// encrypted, over the best path that works (see the package doc).
type Conn struct {
	o          options
	sig        Signaler
	local      string
	peer       string
	initiator  bool
	keys       *sessionKeys
	ctx        context.Context // canceled by Close
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	closeOnce  sync.Once
	start      time.Time
	sendNonce  atomic.Uint64
	rx         chan []byte
	firstPath  chan struct{} // closed when a path first works
	failed     chan struct{} // closed when every path failed
	failOnce   sync.Once
	firstOnce  sync.Once
	natDone    chan struct{}
	turnTried  atomic.Bool
	udpBlocked atomic.Bool // no STUN server answered over UDP
	c          counters
	mu         sync.Mutex // guards everything below
	bases      []base
	remotes    []Candidate
	pairs      map[pairKey]*pair
	active     *pair
	window     replayWindow
	sendSeq    uint64
	reorder    reorderBuf
	lastDataOn pairKey
	handover   time.Time // until when gaps get the handover hold
	changes    []PathChange
	localNAT   *NATInfo
	remoteNAT  *NATInfo
	turnDone   bool // every TURN attempt ended
	srflx      netip.AddrPort
	quick      *NATInfo // this side's NAT from the STUN answers (quickNAT)
	mapped     netip.AddrPort
	relayDone  bool      // step 2 (relay nodes) ended
	relayUp    time.Time // when a relay node was bound
	relayStart atomic.Bool
	sub        atomic.Pointer[subConn] // the relay node being bound
}

type pairKey struct {
	base   int
	remote netip.AddrPort
}

// pair is a local base and a remote address, probed to learn whether
// datagrams pass both ways.
type pair struct {
	key       pairKey
	b         base
	kind      PathKind
	rkind     string // the remote candidate's kind
	lastProbe time.Time
	lastAck   time.Time
	valid     bool
	rtt       time.Duration
	pending   [4]struct {
		tx   uint64
		sent time.Time
	}
	next int
}

type counters struct {
	sent, sentBytes, received, recvBytes atomic.Uint64
	forged, replayed, malformed, foreign atomic.Uint64
	strayAcks, queueDrops, probes, acks  atomic.Uint64
	relayOffered, relayTried             atomic.Uint64
}

// Stats is a snapshot of a Conn's counters.
type Stats struct {
	Path Path
	// Sent and Received count data datagrams; Lost the gaps in the peer's
	// sequence given up on; Late the ones that arrived after that;
	// Reordered the ones that arrived out of order and were put back.
	Sent, Received, Lost, Late, Reordered uint64
	// Forged: authentication failed. Replayed: a nonce seen before.
	// Malformed: not a p2p packet. Foreign: another session's packet.
	// StrayAcks: an ack for no probe sent. QueueDrops: the reader was slow.
	Forged, Replayed, Malformed, Foreign, StrayAcks, QueueDrops uint64
	// Probes sent and acks received.
	Probes, Acks uint64
	// PathChanges counts the path changes so far.
	PathChanges int
	// LocalNAT and RemoteNAT are the behaviours found, when known.
	LocalNAT, RemoteNAT *NATInfo
	// PeerKey is the peer's static public key from the handshake.
	PeerKey []byte
}

// Connect connects to the peer that sig introduces and returns once a path
// works: direct first (STUN, candidates through sig, probes and acks),
// then TURN over UDP, TCP and TLS. It returns ErrNoPath when every path
// failed, ErrHandshake when the peer could not be authenticated, or ctx's
// error. The Conn keeps improving its path until Close.
func Connect(ctx context.Context, sig Signaler, opts ...Option) (*Conn, error) {
	var o options
	for _, f := range opts {
		if err := f(&o); err != nil {
			return nil, err
		}
	}
	o.defaults()
	local, peer, initiator := sig.Names()
	cctx, cancel := context.WithCancel(context.Background())
	c := &Conn{o: o, sig: sig, local: local, peer: peer, initiator: initiator, ctx: cctx, cancel: cancel, start: time.Now(),
		rx: make(chan []byte, o.recvQueue), firstPath: make(chan struct{}), failed: make(chan struct{}),
		natDone: make(chan struct{}), pairs: map[pairKey]*pair{}}
	c.reorder.init()
	err := c.connect(ctx, initiator)
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Conn) connect(ctx context.Context, initiator bool) error {
	pc, err := c.o.net.ListenUDP(c.o.local)
	if err != nil {
		return fmt.Errorf("p2p: listen: %w", err)
	}
	ub := &udpBase{pc: pc, local: addrPortOf(pc.LocalAddr())}
	c.bases = []base{ub}

	// Host candidates go out at once, before the handshake.
	var cands []Candidate
	if !c.o.noHost && !c.o.relayOnly {
		ips, _ := c.o.net.InterfaceAddrs()
		for _, ip := range ips {
			if ub.local.Addr().IsUnspecified() || ub.local.Addr() == ip {
				if ip.Is4() == (ub.local.Addr().Is4() || ub.local.Addr().IsUnspecified()) && len(cands) < maxCandidates {
					cands = append(cands, Candidate{Addr: netip.AddrPortFrom(ip, ub.local.Port()), Kind: "host"})
				}
			}
		}
	}
	if len(cands) > 0 {
		if err := c.sig.Send(ctx, encodeMessage(message{Type: "cand", Candidates: cands})); err != nil {
			return fmt.Errorf("p2p: signal: %w", err)
		}
	}
	// STUN in parallel with the handshake; the socket's reader starts after.
	gathered := make(chan struct{})
	go func() {
		defer close(gathered)
		if c.o.relayOnly || len(c.o.stun) == 0 {
			return
		}
		srflx, other, ok := c.gatherSTUN(ctx, ub)
		if !ok {
			return
		}
		_ = c.sig.Send(ctx, encodeMessage(message{Type: "cand", Candidates: []Candidate{{Addr: srflx, Kind: "srflx"}}}))
		step, port2 := c.portStep(ctx, ub, srflx, other)
		if port2 != 0 && c.o.relayNodes != nil {
			c.quickNAT(ctx, srflx, port2, cands)
		}
		if step > 0 {
			_ = c.sig.Send(ctx, encodeMessage(message{Type: "cand", Candidates: []Candidate{{Addr: srflx, Kind: "srflx", Seq: step}}}))
		}
	}()
	if c.o.portmap != nil && !ub.local.Addr().IsLoopback() { // no router forwards to loopback
		c.wg.Add(1)
		go c.mapPort(ub.local.Port())
	}
	if c.o.natDiscover != nil {
		c.wg.Add(1)
		go c.discoverNAT()
	} else {
		close(c.natDone)
	}

	keys, err := c.handshake(ctx, initiator)
	<-gathered
	if err != nil {
		return err
	}
	c.keys = keys
	c.wg.Add(3)
	go c.signalLoop()
	go c.readLoop(0, ub)
	go c.maintain()
	select {
	case <-c.firstPath:
		return nil
	case <-c.failed:
		return ErrNoPath
	case <-ctx.Done():
		return ctx.Err()
	}
}

// handshake runs Noise XX through signaling; cand and nat messages that
// arrive meanwhile are kept.
func (c *Conn) handshake(ctx context.Context, initiator bool) (*sessionKeys, error) {
	var static noise.DHKey
	if c.o.static != nil {
		static = noise.DHKey{Private: c.o.static, Public: c.o.staticPub}
	} else {
		kp, err := cipherSuite.GenerateKeypair(rand.Reader)
		if err != nil {
			return nil, err
		}
		static = kp
	}
	ini, resp := c.local, c.peer
	if !initiator {
		ini, resp = c.peer, c.local
	}
	h, err := newHandshake(initiator, static, c.o.peerKey, prologue(ini, resp))
	if err != nil {
		return nil, err
	}
	// XX: -> e; <- e, ee, s, es; -> s, se. The initiator writes 1 and 3.
	writeNext := initiator
	for {
		if writeNext {
			msg, keys, err := h.write()
			if err != nil {
				return nil, err
			}
			if err := c.sig.Send(ctx, encodeMessage(message{Type: "hs", Handshake: msg})); err != nil {
				return nil, fmt.Errorf("p2p: signal: %w", err)
			}
			if keys != nil {
				return keys, nil
			}
			writeNext = false
			continue
		}
		b, err := c.sig.Recv(ctx)
		if err != nil {
			return nil, fmt.Errorf("p2p: signal: %w", err)
		}
		m, err := decodeMessage(b)
		if err != nil {
			c.c.malformed.Add(1)
			continue
		}
		switch m.Type {
		case "hs":
			keys, err := h.read(m.Handshake)
			if err != nil {
				return nil, err
			}
			if keys != nil {
				return keys, nil
			}
			writeNext = true
		case "bye":
			return nil, fmt.Errorf("%w: peer left", ErrNoPath)
		default:
			c.handleSignal(m)
		}
	}
}

// gatherSTUN asks every STUN server at once from the direct socket; the
// first answer (lowest RTT) gives the server-reflexive address.
func (c *Conn) gatherSTUN(ctx context.Context, ub *udpBase) (srflx, other netip.AddrPort, ok bool) {
	var servers []netip.AddrPort
	for _, s := range c.o.stun {
		a, err := net.ResolveUDPAddr("udp", s)
		if err != nil {
			continue
		}
		servers = append(servers, addrPortOf(a))
	}
	if len(servers) == 0 {
		return srflx, other, false
	}
	txs := map[[stun.TransactionIDSize]byte]bool{}
	send := func() {
		for _, s := range servers {
			m := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
			txs[m.TransactionID] = true
			_ = ub.WriteTo(m.Raw, s)
		}
	}
	deadline := time.Now().Add(c.o.stunTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	buf := make([]byte, 1500)
	rto := 100 * time.Millisecond
	next := time.Now()
	for time.Now().Before(deadline) {
		if !time.Now().Before(next) {
			send()
			next = time.Now().Add(rto)
			rto *= 2
		}
		_ = ub.pc.SetReadDeadline(next)
		n, _, err := ub.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			break
		}
		m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if !stun.IsMessage(m.Raw) || m.Decode() != nil || !txs[m.TransactionID] {
			continue
		}
		var xa stun.XORMappedAddress
		if xa.GetFrom(m) != nil {
			continue
		}
		ip, _ := netip.AddrFromSlice(xa.IP)
		_ = ub.pc.SetReadDeadline(time.Time{})
		c.mu.Lock()
		c.srflx = netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port))
		c.mu.Unlock()
		var oa stun.MappedAddress
		if oa.GetFromAs(m, stun.AttrOtherAddress) == nil {
			oip, _ := netip.AddrFromSlice(oa.IP)
			other = netip.AddrPortFrom(oip.Unmap(), uint16(oa.Port))
		}
		return netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port)), other, true
	}
	_ = ub.pc.SetReadDeadline(time.Time{})
	// No STUN server answered over UDP: UDP is blocked (or every server
	// is down); TURN over TCP/TLS is the only hope, so it starts now.
	c.udpBlocked.Store(true)
	c.mu.Lock()
	if c.localNAT == nil {
		c.localNAT = &NATInfo{UDPBlocked: true}
	}
	c.mu.Unlock()
	return srflx, other, false
}

// portStep asks the STUN server's other address (RFC 5780 OTHER-ADDRESS)
// for a second mapping from the same socket: a different public port means
// an address-and-port-dependent ("symmetric") mapping, and a small step
// between the two a NAT that hands ports out in sequence, whose next ports
// the peer can predict. It returns the step, or 0.
func (c *Conn) portStep(ctx context.Context, ub *udpBase, srflx, other netip.AddrPort) (step, port2 uint16) {
	if !other.IsValid() || other.Addr().Is4() != srflx.Addr().Is4() {
		return 0, 0
	}
	m := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	deadline := time.Now().Add(300 * time.Millisecond)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	defer func() { _ = ub.pc.SetReadDeadline(time.Time{}) }()
	buf := make([]byte, 1500)
	for try := 0; try < 3 && time.Now().Before(deadline); try++ {
		_ = ub.WriteTo(m.Raw, other)
		rd := time.Now().Add(100 * time.Millisecond)
		if deadline.Before(rd) {
			rd = deadline
		}
		_ = ub.pc.SetReadDeadline(rd)
		for {
			n, _, err := ub.ReadFrom(buf)
			if err != nil {
				break
			}
			r := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if !stun.IsMessage(r.Raw) || r.Decode() != nil || r.TransactionID != m.TransactionID {
				continue
			}
			var xa stun.XORMappedAddress
			if xa.GetFrom(r) != nil {
				return 0, 0
			}
			step := int(xa.Port) - int(srflx.Port())
			if step > 0 && step <= maxSeqStep {
				return uint16(step), uint16(xa.Port)
			}
			return 0, uint16(xa.Port)
		}
	}
	return 0, 0
}

// quickNAT tells the peer, ahead of the full client/nat report, what the
// two STUN answers already show: whether a NAT translates, and whether
// its mapping is endpoint-independent (the same public port towards the
// server's other IP and port). That is all the relay node choice needs of
// a peer (its filtering never matters there), so step 2 need not wait for
// the discovery, which runs only after the direct attempt.
func (c *Conn) quickNAT(ctx context.Context, srflx netip.AddrPort, port2 uint16, hosts []Candidate) {
	info := &NATInfo{Mapping: nat.AddressAndPortDependent.String(), Filtering: nat.Unknown.String(), Behind: true}
	if port2 == srflx.Port() {
		info.Mapping = nat.EndpointIndependent.String()
	}
	for _, h := range hosts {
		if h.Addr == srflx {
			info.Behind = false
		}
	}
	c.mu.Lock()
	c.quick = info
	c.mu.Unlock()
	_ = c.sig.Send(ctx, encodeMessage(message{Type: "nat", NAT: info}))
}

func (c *Conn) discoverNAT() {
	defer c.wg.Done()
	defer close(c.natDone)
	// After the direct attempt: the discovery's own flows would take the
	// ports a sequential NAT hands out next, which the peer predicts.
	t := time.NewTimer(c.o.directTimeout)
	select {
	case <-c.firstPath:
	case <-t.C:
	case <-c.ctx.Done():
	}
	t.Stop()
	if c.ctx.Err() != nil {
		return
	}
	rep, err := c.o.natDiscover(c.ctx)
	info := &NATInfo{Mapping: rep.Mapping.String(), Filtering: rep.Filtering.String(), UDPBlocked: rep.UDPBlocked, Behind: rep.NAT}
	if err != nil && !rep.UDPBlocked {
		c.o.log.Debug("p2p: nat discovery", "err", err)
	}
	c.mu.Lock()
	c.localNAT = info
	c.mu.Unlock()
	_ = c.sig.Send(c.ctx, encodeMessage(message{Type: "nat", NAT: info}))
}

// signalLoop takes the peer's later messages.
func (c *Conn) signalLoop() {
	defer c.wg.Done()
	for {
		b, err := c.sig.Recv(c.ctx)
		if err != nil {
			return
		}
		m, err := decodeMessage(b)
		if err != nil {
			c.c.malformed.Add(1)
			continue
		}
		if m.Type == "bye" {
			go c.Close()
			return
		}
		c.handleSignal(m)
	}
}

func (c *Conn) handleSignal(m message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch m.Type {
	case "cand":
		for _, cd := range m.Candidates {
			c.addRemoteLocked(cd)
		}
	case "nat":
		c.remoteNAT = m.NAT
	case "relay":
		// The initiator's relay node offer (step 2): bind the same
		// nodes in the same order.
		if c.relayStart.CompareAndSwap(false, true) && c.ctx.Err() == nil {
			c.c.relayOffered.Store(uint64(len(m.Relay.Nodes)))
			c.wg.Add(1)
			go func() { defer c.wg.Done(); c.bindRelay(m.Relay.Nodes) }()
		}
	}
}

// addRemoteLocked adds a remote candidate and its pairs with every base.
func (c *Conn) addRemoteLocked(cd Candidate) {
	for i, r := range c.remotes {
		if r.Addr == cd.Addr {
			if r.Kind == "prflx" && (cd.Kind == "relay" || cd.Kind == "relay-node") {
				// A probe from the peer's TURN allocation (through a
				// port mapping, say) came before the candidate: the
				// pairs to it are relayed, not direct.
				c.remotes[i] = cd
				for k, p := range c.pairs {
					if k.remote == cd.Addr {
						p.rkind = cd.Kind
						if rk := turnKind(cd.Transport); cd.Kind == "relay" && rk > p.kind {
							p.kind = rk
						}
					}
				}
				return
			}
			if cd.Seq > 0 && r.Seq == 0 && r.Kind == "srflx" && cd.Kind == "srflx" {
				c.remotes[i].Seq = cd.Seq
				c.predictLocked(cd)
			}
			return
		}
	}
	if len(c.remotes) >= maxRemoteCands {
		return
	}
	if c.o.relayOnly && cd.Kind != "relay" && cd.Kind != "relay-node" && cd.Kind != "prflx" {
		return
	}
	c.remotes = append(c.remotes, cd)
	for i, b := range c.bases {
		c.addPairLocked(i, b, cd)
	}
	if cd.Seq > 0 {
		c.predictLocked(cd)
	}
}

// predictLocked adds the ports a sequential NAT will hand out next as
// candidates (port prediction).
func (c *Conn) predictLocked(cd Candidate) {
	for k := 1; k <= predictPorts; k++ {
		p := int(cd.Addr.Port()) + k*int(cd.Seq)
		if p > 65535 {
			return
		}
		c.addRemoteLocked(Candidate{Addr: netip.AddrPortFrom(cd.Addr.Addr(), uint16(p)), Kind: "predicted"})
	}
}

func (c *Conn) addPairLocked(i int, b base, cd Candidate) {
	if b.LocalAddr().Addr().Is4() != cd.Addr.Addr().Is4() && !b.LocalAddr().Addr().IsUnspecified() {
		return
	}
	if c.o.relayOnly && b.Kind() == PathDirect && cd.Kind != "relay" {
		return
	}
	// A relay node's link reaches only the peer's end on the same node
	// (its writes go to the session's other side whatever the address).
	if (b.Kind() == PathRelayNode) != (cd.Kind == "relay-node") {
		return
	}
	kind := b.Kind()
	if cd.Kind == "relay" {
		if rk := turnKind(cd.Transport); rk > kind {
			kind = rk
		}
	}
	k := pairKey{i, cd.Addr}
	if c.pairs[k] == nil {
		c.pairs[k] = &pair{key: k, b: b, kind: kind, rkind: cd.Kind}
	}
}

// addBase adds a TURN allocation or a relay node's link: its pairs, and
// its candidate cd to the peer.
func (c *Conn) addBase(b base, cd Candidate) {
	c.mu.Lock()
	if c.ctx.Err() != nil {
		c.mu.Unlock()
		b.Close()
		return
	}
	i := len(c.bases)
	c.bases = append(c.bases, b)
	for _, r := range c.remotes {
		c.addPairLocked(i, b, r)
	}
	if cd.Kind == "relay-node" {
		// Both peers bound the same node: its address is the peer's
		// candidate on it too, known without waiting for the message.
		c.addRemoteLocked(cd)
	}
	c.mu.Unlock()
	c.wg.Add(1)
	go c.readLoop(i, b)
	_ = c.sig.Send(c.ctx, encodeMessage(message{Type: "cand", Candidates: []Candidate{cd}}))
}

func (c *Conn) readLoop(i int, b base) {
	defer c.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := b.ReadFrom(buf)
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		if i == 0 {
			// Datagrams of a relay node being bound or bound from
			// the direct socket go to its link.
			if s := c.sub.Load(); s != nil && s.push(from, buf[:n]) {
				continue
			}
		}
		c.handlePacket(i, b, from, buf[:n])
	}
}

// handlePacket authenticates one datagram and acts on it.
func (c *Conn) handlePacket(i int, b base, from netip.AddrPort, pkt []byte) {
	if !IsPacket(pkt) {
		return // STUN stragglers and the like
	}
	h, sealed, err := ParseHeader(pkt)
	if err != nil {
		c.c.malformed.Add(1)
		return
	}
	if h.Session != c.keys.session {
		c.c.foreign.Add(1)
		return
	}
	c.mu.Lock()
	fresh := c.window.check(h.Nonce)
	c.mu.Unlock()
	if !fresh {
		c.c.replayed.Add(1)
		return
	}
	body, err := c.keys.recv.Decrypt(nil, h.Nonce, pkt[:headerLen], sealed)
	if err != nil {
		c.c.forged.Add(1)
		return
	}
	if parseBody(h.Type, body) != nil {
		c.c.malformed.Add(1)
		return
	}
	now := time.Now()
	c.mu.Lock()
	if !c.window.check(h.Nonce) { // a copy raced us
		c.mu.Unlock()
		c.c.replayed.Add(1)
		return
	}
	c.window.accept(h.Nonce)
	key := pairKey{i, from}
	switch h.Type {
	case typeProbe:
		known := false
		for _, r := range c.remotes {
			if r.Addr == from {
				known = true
				break
			}
		}
		if !known {
			// Peer-reflexive: the peer's NAT mapped it to an address
			// it could not know (symmetric mapping); answer there too.
			c.addRemoteLocked(Candidate{Addr: from, Kind: "prflx"})
			// The probe says which path it left on: one sent from the
			// peer's TURN allocation is relayed, whatever address it
			// arrives from (a port mapping that clashes with a flow
			// this side opened to the relay rewrites the source port).
			if sk := PathKind(body[8]); sk >= PathTURNUDP && sk <= PathTURNTLS {
				if p := c.pairs[key]; p != nil && sk > p.kind {
					p.kind = sk
				}
			}
		}
		p := c.pairs[key]
		c.mu.Unlock()
		ack := c.seal(typeAck, body[:8])
		_ = b.WriteTo(ack, from)
		if p != nil {
			c.mu.Lock()
			// A triggered check (RFC 8445 section 7.3.1.4): the
			// peer's probe got through, so ours back likely will too,
			// now that the peer's side has sent to us.
			triggered := !p.valid && now.Sub(p.lastProbe) > 2*time.Millisecond
			c.mu.Unlock()
			if triggered {
				c.probe(p, now)
			}
		}
		return
	case typeAck:
		c.c.acks.Add(1)
		tx := binary.BigEndian.Uint64(body)
		p := c.pairs[key]
		if p == nil || !p.pendingLocked(tx) {
			// The ack came from another address than the probe went
			// to (a router's port mapping may answer from another
			// port): the authenticated, random probe id names the
			// pair.
			p = c.pairByTxLocked(i, tx)
		}
		if p == nil {
			c.mu.Unlock()
			c.c.strayAcks.Add(1)
			return
		}
		matched := false
		for j := range p.pending {
			if p.pending[j].tx == tx && tx != 0 {
				rtt := now.Sub(p.pending[j].sent)
				if p.rtt == 0 {
					p.rtt = rtt
				} else {
					p.rtt = (7*p.rtt + rtt) / 8
				}
				p.pending[j].tx = 0
				matched = true
			}
		}
		if !matched {
			c.mu.Unlock()
			c.c.strayAcks.Add(1)
			return
		}
		p.valid = true
		p.lastAck = now
		var ev *PathChange
		if c.active == nil || p.kind.better(c.active.kind) {
			ev = c.switchLocked(p, now)
		}
		c.mu.Unlock()
		c.emit(ev)
		return
	case typeData:
		seq := binary.BigEndian.Uint64(body)
		if c.lastDataOn != key {
			if c.lastDataOn != (pairKey{}) {
				c.handover = now.Add(c.o.handoverHold * 2)
			}
			c.lastDataOn = key
		}
		c.c.received.Add(1)
		c.c.recvBytes.Add(uint64(len(body) - 8))
		out := c.reorder.push(seq, body[8:], now, c.holdLocked(now))
		c.mu.Unlock()
		c.deliver(out)
	}
}

func (c *Conn) deliver(out [][]byte) {
	for _, p := range out {
		select {
		case c.rx <- p:
		default:
			c.c.queueDrops.Add(1)
		}
	}
}

// switchLocked makes p the live path and returns the change to report.
func (c *Conn) switchLocked(p *pair, now time.Time) *PathChange {
	from := c.pathLocked()
	reason := "upgrade"
	switch {
	case c.active == nil && len(c.changes) == 0:
		reason = "first"
	case c.active == nil:
		reason = "failover"
	}
	c.active = p
	ch := PathChange{From: from, To: c.pathLocked(), At: now, Reason: reason}
	c.changes = append(c.changes, ch)
	return &ch
}

func (c *Conn) emit(ev *PathChange) {
	if ev == nil {
		return
	}
	c.o.log.Info("p2p: path", "reason", ev.Reason, "from", ev.From.String(), "to", ev.To.String())
	if ev.To.Kind != PathNone {
		c.firstOnce.Do(func() { close(c.firstPath) })
	}
	if c.o.onChange != nil {
		c.o.onChange(*ev)
	}
}

func (c *Conn) pathLocked() Path {
	if c.active == nil {
		return Path{}
	}
	return Path{Kind: c.active.kind, Local: c.active.b.LocalAddr(), Remote: c.active.key.remote, RTT: c.active.rtt, Candidate: c.active.rkind}
}

// seal encrypts a packet of typ around body with the next nonce.
func (c *Conn) seal(typ byte, body []byte) []byte {
	n := c.sendNonce.Add(1)
	out := make([]byte, 0, headerLen+len(body)+tagLen)
	out = appendHeader(out, Header{Type: typ, Session: c.keys.session, Nonce: n})
	return c.keys.send.Encrypt(out, n, out[:headerLen], body)
}

// probe sends one probe on p.
func (c *Conn) probe(p *pair, now time.Time) {
	var tx [8]byte
	_, _ = rand.Read(tx[:])
	t := binary.BigEndian.Uint64(tx[:]) | 1
	c.mu.Lock()
	p.lastProbe = now
	p.pending[p.next] = struct {
		tx   uint64
		sent time.Time
	}{t, now}
	p.next = (p.next + 1) % len(p.pending)
	c.mu.Unlock()
	body := binary.BigEndian.AppendUint64(nil, t)
	body = append(body, byte(p.b.Kind()))
	c.c.probes.Add(1)
	_ = p.b.WriteTo(c.seal(typeProbe, body), p.key.remote)
}

// maintain probes, fails over, falls back to TURN and flushes the reorder
// buffer's expired gaps.
func (c *Conn) maintain() {
	defer c.wg.Done()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	c.tick(time.Now()) // the first probes at once, not a tick later
	for {
		select {
		case <-c.ctx.Done():
			return
		case now := <-t.C:
			c.tick(now)
		}
	}
}

func (c *Conn) tick(now time.Time) {
	var due []*pair
	var ev *PathChange
	c.mu.Lock()
	if a := c.active; a != nil && now.Sub(a.lastAck) > c.o.pathTimeout {
		a.valid = false
		c.active = nil
		// The best other pair that answered lately.
		var best *pair
		for _, p := range c.sortedPairsLocked() {
			if p.valid && now.Sub(p.lastAck) < c.o.pathTimeout && (best == nil || p.kind.better(best.kind)) {
				best = p
			}
		}
		if best != nil {
			ev = c.switchLocked(best, now)
			ev.Reason = "failover"
		} else {
			ch := PathChange{From: Path{Kind: a.kind, Local: a.b.LocalAddr(), Remote: a.key.remote, RTT: a.rtt}, At: now, Reason: "lost"}
			c.changes = append(c.changes, ch)
			ev = &ch
		}
	}
	for _, p := range c.sortedPairsLocked() {
		var every time.Duration
		switch {
		case c.active == nil:
			every = 50 * time.Millisecond
		case p == c.active:
			every = c.o.keepalive
		case p.kind.better(c.active.kind):
			every = c.o.upgrade
		default:
			continue
		}
		if now.Sub(p.lastProbe) >= every {
			due = append(due, p)
		}
	}
	late := c.o.relayOnly || c.udpBlocked.Load() || now.Sub(c.start) > c.o.directTimeout
	// Step 2, relay nodes, before TURN: the initiator asks for nodes
	// once the direct timeout passed; the responder waits for its offer.
	needRelay := c.active == nil && late && c.o.relayNodes != nil && c.initiator
	if c.o.relayNodes == nil || c.udpBlocked.Load() || (!c.initiator && now.Sub(c.start) > c.o.directTimeout+relayOfferWait && !c.relayStart.Load()) {
		c.relayDone = true
	}
	relayPending := !c.relayDone || (!c.relayUp.IsZero() && now.Sub(c.relayUp) < time.Second)
	needTURN := c.active == nil && len(c.o.turn) > 0 && late && !relayPending
	allFailed := c.active == nil && c.turnDone && c.relayDone && now.Sub(c.start) > c.o.directTimeout+c.o.pathTimeout
	flushed := c.reorder.expire(now, c.holdLocked(now))
	c.mu.Unlock()
	c.emit(ev)
	c.deliver(flushed)
	for _, p := range due {
		c.probe(p, now)
	}
	if needRelay && c.relayStart.CompareAndSwap(false, true) {
		c.wg.Add(1)
		go c.relayOffer()
	}
	if needTURN && c.turnTried.CompareAndSwap(false, true) {
		c.wg.Add(1)
		go c.fallback()
	}
	if allFailed || (c.active == nil && len(c.o.turn) == 0 && !relayPending && now.Sub(c.start) > c.o.directTimeout+c.o.pathTimeout) {
		c.failOnce.Do(func() { close(c.failed) })
	}
}

func (c *Conn) holdLocked(now time.Time) time.Duration {
	if now.Before(c.handover) {
		return c.o.handoverHold
	}
	return c.o.reorderHold
}

func (c *Conn) sortedPairsLocked() []*pair {
	ps := make([]*pair, 0, len(c.pairs))
	for _, p := range c.pairs {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].key.base != ps[j].key.base {
			return ps[i].key.base < ps[j].key.base
		}
		return ps[i].key.remote.Compare(ps[j].key.remote) < 0
	})
	return ps
}

// fallback allocates on the TURN servers, UDP ones first, then TCP, then
// TLS, and keeps the first allocation that works.
func (c *Conn) fallback() {
	defer c.wg.Done()
	defer func() { c.mu.Lock(); c.turnDone = true; c.mu.Unlock() }()
	for _, tr := range []string{"udp", "tcp", "tls"} {
		for _, s := range c.o.turn {
			if s.Transport != tr || (tr == "udp" && c.udpBlocked.Load()) {
				continue
			}
			b, err := allocate(c.ctx, c.o.net, s, c.o.turnTimeout)
			if err != nil {
				c.o.log.Info("p2p: turn allocation failed", "server", s.Addr, "transport", tr, "err", err)
				continue
			}
			if c.ctx.Err() != nil {
				b.Close()
				return
			}
			c.addBase(b, Candidate{Addr: b.LocalAddr(), Kind: "relay", Transport: tr})
			return
		}
	}
}

// WriteDatagram sends p to the peer on the live path, encrypted. It
// returns ErrNoPath when no path works at the moment (the datagram is
// dropped: media does not wait), ErrTooBig above MaxPayload.
func (c *Conn) WriteDatagram(p []byte) error {
	if len(p) > MaxPayload {
		return ErrTooBig
	}
	if c.ctx.Err() != nil {
		return ErrClosed
	}
	c.mu.Lock()
	a := c.active
	if a == nil {
		c.mu.Unlock()
		return ErrNoPath
	}
	seq := c.sendSeq
	c.sendSeq++
	// The nonce is taken under the lock too, so that nonces and
	// sequence numbers rise together on the wire.
	body := make([]byte, 8, 8+len(p))
	binary.BigEndian.PutUint64(body, seq)
	body = append(body, p...)
	pkt := c.seal(typeData, body)
	c.mu.Unlock()
	c.c.sent.Add(1)
	c.c.sentBytes.Add(uint64(len(p)))
	return a.b.WriteTo(pkt, a.key.remote)
}

// ReadDatagram returns the peer's next datagram, in the order sent.
func (c *Conn) ReadDatagram(ctx context.Context) ([]byte, error) {
	select {
	case p := <-c.rx:
		return p, nil
	case <-c.ctx.Done():
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Path returns the path this side sends on now.
func (c *Conn) Path() Path {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pathLocked()
}

// PathChanges returns every path change so far, oldest first.
func (c *Conn) PathChanges() []PathChange {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]PathChange(nil), c.changes...)
}

// Stats returns a snapshot of the counters.
func (c *Conn) Stats() Stats {
	c.mu.Lock()
	s := Stats{Path: c.pathLocked(), Lost: c.reorder.lost, Late: c.reorder.late, Reordered: c.reorder.reordered,
		PathChanges: len(c.changes), LocalNAT: c.localNAT, RemoteNAT: c.remoteNAT}
	if c.keys != nil {
		s.PeerKey = c.keys.peerStatic
	}
	c.mu.Unlock()
	s.Sent, s.Received = c.c.sent.Load(), c.c.received.Load()
	s.Forged, s.Replayed, s.Malformed, s.Foreign = c.c.forged.Load(), c.c.replayed.Load(), c.c.malformed.Load(), c.c.foreign.Load()
	s.StrayAcks, s.QueueDrops, s.Probes, s.Acks = c.c.strayAcks.Load(), c.c.queueDrops.Load(), c.c.probes.Load(), c.c.acks.Load()
	return s
}

// Peer is the peer's name as signaling vouched for it.
func (c *Conn) Peer() string { return c.peer }

// Close tells the peer, closes every socket and allocation and waits for
// the Conn's goroutines. It is idempotent.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		if c.keys != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			_ = c.sig.Send(ctx, encodeMessage(message{Type: "bye"}))
			cancel()
		}
		c.cancel()
		c.mu.Lock()
		bs := append([]base(nil), c.bases...)
		c.mu.Unlock()
		for _, b := range bs {
			b.Close()
		}
		c.wg.Wait()
	})
	return nil
}

// PairState describes one candidate pair, for diagnostics.
type PairState struct {
	Kind          PathKind
	Local, Remote netip.AddrPort
	// Valid: an ack came back; LastAck when; Live: the pair carries the flow.
	Valid, Live bool
	LastAck     time.Time
	RTT         time.Duration
}

// Pairs returns the state of every candidate pair.
func (c *Conn) Pairs() []PairState {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []PairState
	for _, p := range c.sortedPairsLocked() {
		out = append(out, PairState{Kind: p.kind, Local: p.b.LocalAddr(), Remote: p.key.remote, Valid: p.valid,
			Live: p == c.active, LastAck: p.lastAck, RTT: p.rtt})
	}
	return out
}

func (p *pair) pendingLocked(tx uint64) bool {
	for j := range p.pending {
		if p.pending[j].tx == tx && tx != 0 {
			return true
		}
	}
	return false
}

// pairByTxLocked finds base i's pair that sent probe tx.
func (c *Conn) pairByTxLocked(i int, tx uint64) *pair {
	for k, p := range c.pairs {
		if k.base == i && p.pendingLocked(tx) {
			return p
		}
	}
	return nil
}
