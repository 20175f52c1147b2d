package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/cascade/probe"
	"github.com/traverse-rtc/traverse/internal/cascade/recovery"
	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

// NodeID names a node.
type NodeID = relaywire.NodeID

// StreamKey names a published track.
type StreamKey struct{ Room, Publisher, Track string }

// Local is what this node's SFU implements for the relay. Every slice is
// valid only during the call.
type Local interface {
	// DeliverMedia hands the SFU an RTP packet of a remote publisher's
	// track, for this node's subscribers of it.
	DeliverMedia(room, publisher, track []byte, layer uint8, rtp []byte)
	// DeliverFeedback hands the SFU RTCP (PLI, FIR, NACK) or a layer
	// choice for one of its own publishers' tracks, sent by node from
	// where that track's remote subscribers are.
	DeliverFeedback(room, publisher, track []byte, layer uint8, from NodeID, rtcp []byte)
	// Need says that other nodes now need a local publisher's track
	// (needed) or that none does any more. On needed the SFU should ask
	// the publisher for a keyframe and pass the track's packets to Send.
	Need(k StreamKey, needed bool)
}

// Config configures an Endpoint.
type Config struct {
	// Node is this node's id (not 0).
	Node NodeID
	// Listen is the relay port's address.
	Listen netip.AddrPort
	// Secret is the cluster secret the link keys derive from (at least
	// relaywire.MinSecret bytes); Epoch the key epoch.
	Secret []byte
	Epoch  uint16
	// Local receives what is addressed to this node (required).
	Local Local
	// HopLimit written into messages this node sends (default
	// relaywire.DefaultHopLimit, 8).
	HopLimit uint8
	// Tick is the period of the link timers: FEC group closing, NACKs,
	// probes (default 5 ms).
	Tick time.Duration
	// Sender, Receiver and Probe tune each link (package defaults).
	Sender   recovery.SenderConfig
	Receiver recovery.ReceiverConfig
	Probe    probe.Config
	// Registry receives the endpoint's metrics (none when nil).
	Registry prometheus.Registerer

	// ClientAuth, when set, lets relay clients publish through this port
	// (clients.go); Local must then implement ClientLocal. MaxClients
	// bounds the clients bound at once (DefaultMaxClients), ClientRate the
	// client frames and HelloRate the hellos per second from one source
	// address (DefaultClientRate, DefaultHelloRate; negative: no limit),
	// ClientIdle how long a quiet client keeps its tracks
	// (DefaultClientIdle).
	ClientAuth ClientAuth
	MaxClients int
	ClientRate float64
	HelloRate  float64
	ClientIdle time.Duration
}

func (c *Config) validate() error {
	if c.Node == 0 || !c.Listen.IsValid() || c.Local == nil {
		return fmt.Errorf("%w: node, listen address and local are required", ErrConfig)
	}
	if len(c.Secret) < relaywire.MinSecret {
		return fmt.Errorf("%w: %w", ErrConfig, relaywire.ErrSecret)
	}
	if c.HopLimit == 0 {
		c.HopLimit = relaywire.DefaultHopLimit
	}
	if c.Tick <= 0 {
		c.Tick = 5 * time.Millisecond
	}
	return nil
}

type peer struct {
	id   NodeID
	addr netip.AddrPort
	link *relaywire.Link

	// mu guards the link's loss recovery and probing state below and the
	// scratch buffers that go with them. snd (with the parity buffers)
	// and rcv hold most of a link's memory (about 1.6 MB together): they
	// are made when the first data message is sent or received on the
	// link (sender, receiver), so a peer that only exchanges probes costs
	// a few kilobytes.
	mu       sync.Mutex
	cfg      *Config
	snd      *recovery.Sender
	rcv      *recovery.Receiver
	prb      *probe.Prober
	dataLoss float64 // smoothed loss of data from this peer, reported in echoes
	parity   [relaywire.MaxShards][]byte
	nParity  int
	emit     func([]byte)
	body     []byte
	nacks    []uint32
	counted  [4]uint64 // refused, lost, late, duplicates already added to the metrics
	// blocked: the link is out of service (Endpoint.Block).
	blocked atomic.Bool
	// dataSent counts the data messages sent on the link (not
	// retransmissions, not parity); under mu.
	dataSent uint64
	// held: the holder of mu holds the link's lock too (sealPending, or
	// the reader loop's run of frames from the peer), so queue seals with
	// SealHeld; under mu.
	held bool
}

func newPeer(cfg *Config, id NodeID, addr netip.AddrPort) (*peer, error) {
	l, err := relaywire.NewLink(cfg.Secret, cfg.Node, id, cfg.Epoch)
	if err != nil {
		return nil, err
	}
	p := &peer{id: id, addr: addr, link: l, cfg: cfg, prb: probe.New(cfg.Probe),
		body: make([]byte, 0, udpio.MaxPacket), nacks: make([]uint32, 0, relaywire.MaxNack)}
	p.emit = func(b []byte) {
		if p.nParity < len(p.parity) {
			p.parity[p.nParity] = append(p.parity[p.nParity][:0], b...)
			p.nParity++
		}
	}
	return p, nil
}

// sender returns the link's sender, made on first use. p.mu is held.
func (p *peer) sender(now time.Time) *recovery.Sender {
	if p.snd == nil {
		p.snd = recovery.NewSender(p.cfg.Sender)
		if p.snd != nil {
			p.tuneFEC(now)
		}
		for i := range p.parity {
			p.parity[i] = make([]byte, 0, udpio.MaxPacket)
		}
	}
	return p.snd
}

// tuneFEC gives the link's sender the loss the peer reports and the RTT
// the probes measure (recovery.Sender.SetLink): the lesser of the
// smoothed and the last, as for the NACK interval (tickPeer), so that one
// probe answered late by a stalled process does not price the link as a
// far one for seconds. p.mu is held.
func (p *peer) tuneFEC(now time.Time) {
	st := p.prb.Stats(now)
	p.snd.SetLink(st.PeerLoss, min(st.RTT, st.LastRTT))
}

// receiver returns the link's receiver, made on first use. p.mu is held.
func (p *peer) receiver() *recovery.Receiver {
	if p.rcv == nil {
		p.rcv = recovery.NewReceiver(p.cfg.Receiver)
	}
	return p.rcv
}

type routeTable struct {
	id   uint32
	next map[NodeID]NodeID
}

type need struct {
	dsts []NodeID
	seq  atomic.Uint32
}

// forward is a remote track this node forwards on (SetForward).
type forward struct {
	dsts    []NodeID
	deliver bool
}

// forwardKey is the forwards' map key: room, publisher and track joined by
// NUL (names never hold one), built from a relay header's names into a
// stack buffer so that the lookup does not allocate.
func forwardKey[S ~string | ~[]byte](b []byte, room, publisher, track S) []byte {
	b = append(b, room...)
	b = append(b, 0)
	b = append(b, publisher...)
	b = append(b, 0)
	return append(b, track...)
}

// Endpoint is a node's relay port.
type Endpoint struct {
	cfg  Config
	conn *udpio.Conn
	m    *metrics

	peers  atomic.Pointer[map[NodeID]*peer]
	routes atomic.Pointer[routeTable]
	// needMu guards needs and serialises SetForward.
	needMu sync.RWMutex
	needs  map[StreamKey]*need
	// fwd are the remote tracks this node forwards on (copy on write).
	fwd    atomic.Pointer[map[string]*forward]
	peerMu sync.Mutex // serialises SetPeers and SetEpoch; guards cfg.Epoch, prevEpoch, hasPrev and blocked
	// prevEpoch is the epoch before cfg.Epoch while its frames are still
	// accepted (hasPrev: between SetEpoch and RetireEpoch).
	prevEpoch uint16
	hasPrev   bool
	// blocked are the peers whose links are out of service (Block).
	blocked map[NodeID]bool

	cl *clients // nil without ClientAuth

	// media counts data frames and client media received (Activity).
	media atomic.Uint64

	// seqs are the end-to-end sequence windows of the streams this node
	// is a destination of (dedupe.go).
	seqs seqWindows

	scratch sync.Pool // *scratch for Send and the timers
	loop    *scratch  // the reader loop's own
	rx      rxQueue   // messages the reader loop has opened, to dispatch

	closeOnce sync.Once
	closed    chan struct{}
}

// scratch is the buffers one goroutine needs to route and send a message.
type scratch struct {
	h relaywire.Header
	// hdr holds the data body being sent: the link sequence's room, then
	// the re-encoded relay header and the payload
	hdr []byte
	// now is the time the frame being handled arrived (or the local send
	// began): one clock read per packet in, not one per next hop
	now    time.Time
	frame  []byte
	groups [relaywire.MaxDst]group
	out    outQ
	// pend and pslab: the reader loop's data messages routed in this read
	// batch (their bodies in pslab), numbered and sealed per next hop at
	// its end (sealPending), with one lock round trip per next hop
	pend  []pending
	pslab []byte
	// forwarded and sent: copies routed and not yet added to the
	// metrics (countOut: once per batch, not per next hop)
	forwarded, sent int
	// fanning: route is sending a holder's copies (fanOut), counted as
	// forwarded.
	fanning bool
}

// pending is a data message for the next hop p: its relay header in
// scratch.pslab, its payload (in the reader loop's buffers, shared by the
// message's next hops).
type pending struct {
	p        *peer
	off, end int
	payload  []byte
}

type group struct {
	next NodeID
	dsts [relaywire.MaxDst]NodeID
	n    uint8
}

// outQ collects frames: the reader loop's into a batch sent with one
// sendmmsg (only the reader loop calls WriteBatch), the frames to one next
// hop as runs the kernel segments (UDP GSO, udpio.Options.Coalesce);
// everyone else's straight to the socket with WriteTo, which is safe for
// concurrent use.
type outQ struct {
	msgs  []udpio.Message
	n     int
	batch bool
}

// rxQueue holds the messages opened from a run of one peer's frames (data
// messages and what FEC rebuilt with them) until the peer's lock is
// released (releaseRx): the reader loop holds p's lock and its link's
// across consecutive frames from p, at most rxRun of them.
type rxQueue struct {
	p    *peer // whose locks the reader loop holds, nil when none
	n    int   // frames handled under them
	slab []byte
	off  []int
}

// rxRun is the most frames from one peer the reader loop handles under one
// hold of its locks before it dispatches what they carried: the first
// one's local delivery waits for the others' opening.
const rxRun = 16

func (q *rxQueue) add(msg []byte) {
	q.off = append(q.off, len(q.slab))
	q.slab = append(q.slab, msg...)
}

// loopOut is the most frames the reader loop queues before it sends them
// (at the end of each read batch, or when this many are queued): the
// longer the queue, the longer the runs to one next hop that leave as one
// UDP GSO send; the shorter, the sooner the first frame of a large batch
// leaves.
const loopOut = 128

// loopReads is the most reads (datagrams, or runs the kernel coalesced)
// the reader loop takes in one system call; each buffer holds a whole
// coalesced read (udpio.MaxCoalesced).
const loopReads = 32

func newScratch(batch bool) *scratch {
	s := &scratch{hdr: make([]byte, 0, udpio.MaxPacket), frame: make([]byte, 0, udpio.MaxPacket)}
	n := 1
	if batch {
		n = loopOut
	}
	s.out = outQ{msgs: udpio.NewMessages(n, 0), batch: batch}
	if batch {
		s.pend = make([]pending, 0, loopOut)
		s.pslab = make([]byte, 0, loopOut*udpio.MaxPacket)
	}
	return s
}

// New opens the relay port.
func New(cfg Config) (*Endpoint, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registry)
	if err != nil {
		return nil, err
	}
	network := "udp4"
	if cfg.Listen.Addr().Is6() {
		network = "udp6"
	}
	// Coalesce: the reader loop's batch leaves as one run of datagrams per
	// next hop (UDP GSO) and runs from a peer arrive as one read (GRO)
	conn, err := udpio.Listen(context.Background(), network, cfg.Listen.String(),
		udpio.Options{ReadBuffer: 4 << 20, WriteBuffer: 4 << 20, Batch: loopOut, Coalesce: true})
	if err != nil {
		return nil, err
	}
	e := &Endpoint{cfg: cfg, conn: conn, m: m, needs: map[StreamKey]*need{}, loop: newScratch(true), closed: make(chan struct{})}
	e.scratch.New = func() any { return newScratch(false) }
	empty := map[NodeID]*peer{}
	e.peers.Store(&empty)
	noFwd := map[string]*forward{}
	e.fwd.Store(&noFwd)
	e.routes.Store(&routeTable{next: map[NodeID]NodeID{}})
	e.rx.slab = make([]byte, 0, 64*udpio.MaxPacket)
	if err := e.openClients(); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return e, nil
}

// Addr is the relay port's bound address.
func (e *Endpoint) Addr() netip.AddrPort { return e.conn.LocalAddr() }

// SetPeers sets the neighbours this node exchanges frames with (node ->
// relay address, from the controller's registry). A peer whose address is
// unchanged keeps its link state.
func (e *Endpoint) SetPeers(peers map[NodeID]netip.AddrPort) error {
	e.peerMu.Lock()
	defer e.peerMu.Unlock()
	old := *e.peers.Load()
	next := make(map[NodeID]*peer, len(peers))
	for id, addr := range peers {
		if id == e.cfg.Node || id == 0 {
			continue
		}
		if p, ok := old[id]; ok && p.addr == addr {
			next[id] = p
			continue
		}
		p, err := newPeer(&e.cfg, id, addr)
		if err == nil && e.hasPrev {
			// a link made during an overlap opens the previous epoch too
			if p.link, err = relaywire.NewLink(e.cfg.Secret, e.cfg.Node, id, e.prevEpoch); err == nil {
				err = p.link.Rotate(e.cfg.Epoch)
			}
		}
		if err != nil {
			return err
		}
		p.blocked.Store(e.blocked[id])
		next[id] = p
	}
	e.peers.Store(&next)
	return nil
}

// SetEpoch moves every link to a new key epoch (the controller rotates
// the cluster's keys): frames are sealed under it from now on, frames
// under the previous epoch are still accepted until RetireEpoch (the
// overlap), and so are frames under the next one (a peer that rotated
// first).
func (e *Endpoint) SetEpoch(epoch uint16) error {
	e.peerMu.Lock()
	defer e.peerMu.Unlock()
	if epoch == e.cfg.Epoch {
		return nil
	}
	for _, p := range *e.peers.Load() {
		if err := p.link.Rotate(epoch); err != nil {
			return err
		}
	}
	e.prevEpoch, e.hasPrev = e.cfg.Epoch, true
	e.cfg.Epoch = epoch
	return nil
}

// RetireEpoch ends the overlap after a rotation: frames under the previous
// epoch are dropped from now on (traverse_relay_dropped_total{reason=
// "epoch"}).
func (e *Endpoint) RetireEpoch() {
	e.peerMu.Lock()
	defer e.peerMu.Unlock()
	if !e.hasPrev {
		return
	}
	e.hasPrev = false
	for _, p := range *e.peers.Load() {
		p.link.Retire()
	}
}

// SetRoutes sets this node's route table (destination -> next hop) and
// its generation, written into the messages this node sends.
func (e *Endpoint) SetRoutes(id uint32, next map[NodeID]NodeID) {
	t := &routeTable{id: id, next: make(map[NodeID]NodeID, len(next))}
	for d, nh := range next {
		t.next[d] = nh
	}
	e.routes.Store(t)
}

// MaxNeed is the most nodes one track is forwarded to by this node.
const MaxNeed = 256

// sendTo is the nodes of a need or forward of k: without this node, 0 or
// repeats; ErrTooMany beyond MaxNeed.
func (e *Endpoint) sendTo(k StreamKey, dsts []NodeID) ([]NodeID, error) {
	keep := make([]NodeID, 0, len(dsts))
	for _, d := range dsts {
		if d != e.cfg.Node && d != 0 && !slices.Contains(keep, d) {
			keep = append(keep, d)
		}
	}
	if len(keep) > MaxNeed {
		return nil, fmt.Errorf("%w: %d nodes for %s/%s/%s, at most %d", ErrTooMany, len(keep), k.Room, k.Publisher, k.Track, MaxNeed)
	}
	return keep, nil
}

// SetNeed sets the nodes that need the local track k (the controller's
// push command); an empty list stops forwarding it. Local.Need is told
// when the track becomes needed or not. More than MaxNeed nodes is an
// error and changes nothing.
func (e *Endpoint) SetNeed(k StreamKey, dsts []NodeID) error {
	keep, err := e.sendTo(k, dsts)
	if err != nil {
		return err
	}
	e.needMu.Lock()
	n, had := e.needs[k]
	if len(keep) == 0 {
		delete(e.needs, k)
	} else if had {
		n2 := &need{dsts: keep}
		n2.seq.Store(n.seq.Load())
		e.needs[k] = n2
	} else {
		n = &need{dsts: keep}
		// numbering starts at the clock, not at 0: a track sent again
		// (or a restarted node) continues above what it sent before, so
		// the receivers' duplicate windows (dedupe.go) take it as new
		n.seq.Store(seqStart(time.Now()))
		e.needs[k] = n
	}
	e.needMu.Unlock()
	if had != (len(keep) > 0) {
		e.cfg.Local.Need(k, !had)
	}
	return nil
}

// SetForward makes this node a holder of the remote track k in the
// track's distribution tree (the controller's command): each media
// message of k addressed to this node is sent on to dsts as well, once
// per next hop, keeping the source, sequence number and the hop limit
// the message arrived with less one (so a loop of holders ends like any
// other). deliver says whether this node's SFU also wants the track (its
// subscribers); without it a holder forwards only. An empty dsts stops
// it. More than MaxNeed nodes is an error and changes nothing.
func (e *Endpoint) SetForward(k StreamKey, dsts []NodeID, deliver bool) error {
	keep, err := e.sendTo(k, dsts)
	if err != nil {
		return err
	}
	if len(k.Room) > relaywire.MaxName || len(k.Publisher) > relaywire.MaxName || len(k.Track) > relaywire.MaxName {
		return fmt.Errorf("%w: %s/%s/%s: longer than %d bytes", ErrName, k.Room, k.Publisher, k.Track, relaywire.MaxName)
	}
	fk := string(forwardKey(nil, k.Room, k.Publisher, k.Track))
	e.needMu.Lock()
	defer e.needMu.Unlock()
	old := *e.fwd.Load()
	next := make(map[string]*forward, len(old)+1)
	for key, f := range old {
		next[key] = f
	}
	if len(keep) == 0 {
		delete(next, fk)
	} else {
		next[fk] = &forward{dsts: keep, deliver: deliver}
	}
	e.fwd.Store(&next)
	return nil
}

// lookupForward finds the forward of a message's track, nil when none.
func (e *Endpoint) lookupForward(h *relaywire.Header) *forward {
	m := *e.fwd.Load()
	if len(m) == 0 {
		return nil
	}
	var kb [3*relaywire.MaxName + 2]byte
	return m[string(forwardKey(kb[:0], h.Room, h.Publisher, h.Track))]
}

// DataSent returns how many data messages this node sent on each link
// (not retransmissions or parity): diagnostics, and the tests' measure of
// a track crossing each link once.
func (e *Endpoint) DataSent() map[NodeID]uint64 {
	out := map[NodeID]uint64{}
	for id, p := range *e.peers.Load() {
		p.mu.Lock()
		out[id] = p.dataSent
		p.mu.Unlock()
	}
	return out
}

// Send sends an RTP packet of a local publisher's track to the nodes that
// need it, once per next hop (a track needed by more than
// relaywire.MaxDst nodes goes out as one message per MaxDst of them). It
// reports whether any node needs it.
func (e *Endpoint) Send(k StreamKey, layer uint8, rtp []byte) bool {
	e.needMu.RLock()
	n := e.needs[k]
	e.needMu.RUnlock()
	if n == nil {
		return false
	}
	s := e.scratch.Get().(*scratch)
	defer e.scratch.Put(s)
	seq := n.seq.Add(1)
	for rest := n.dsts; len(rest) > 0; {
		chunk := rest[:min(len(rest), relaywire.MaxDst)]
		rest = rest[len(chunk):]
		h := &s.h
		*h = relaywire.Header{Kind: relaywire.KindMedia, HopLimit: e.cfg.HopLimit, Layer: layer, Source: e.cfg.Node,
			Seq: seq, NDst: uint8(len(chunk))}
		copy(h.Dst[:], chunk)
		e.originate(s, h, k, rtp)
	}
	return true
}

// SendFeedback sends RTCP or a layer choice for a remote publisher's track
// towards the publisher's node to.
func (e *Endpoint) SendFeedback(k StreamKey, layer uint8, to NodeID, rtcp []byte) error {
	if _, ok := e.routes.Load().next[to]; !ok {
		return ErrNoRoute
	}
	s := e.scratch.Get().(*scratch)
	defer e.scratch.Put(s)
	h := &s.h
	*h = relaywire.Header{Kind: relaywire.KindFeedback, HopLimit: e.cfg.HopLimit, Layer: layer, Source: e.cfg.Node, NDst: 1}
	h.Dst[0] = to
	e.originate(s, h, k, rtcp)
	return nil
}

// originate sends a message this node starts. The names are appended to
// the scratch header buffer, so that no string becomes a []byte on the heap.
func (e *Endpoint) originate(s *scratch, h *relaywire.Header, k StreamKey, payload []byte) {
	if len(k.Room) > relaywire.MaxName || len(k.Publisher) > relaywire.MaxName || len(k.Track) > relaywire.MaxName {
		e.m.drops[dropMalformed].Inc()
		return
	}
	names := append(s.frame[:0], k.Room...)
	names = append(names, k.Publisher...)
	names = append(names, k.Track...)
	r, p := len(k.Room), len(k.Room)+len(k.Publisher)
	h.Room, h.Publisher, h.Track = names[:r], names[r:p], names[p:]
	h.RouteID = e.routes.Load().id
	s.now = time.Now()
	// the names live in s.frame until the header is encoded; route encodes
	// into s.hdr and seals into the out queue's buffers
	e.route(s, h, payload, 0, false)
	e.flush(&s.out)
	e.countOut(s)
}

// route sends h and payload on to every destination's next hop, grouping
// destinations by next hop; with local it first hands the message to the
// SFU when this node is a destination.
func (e *Endpoint) route(s *scratch, h *relaywire.Header, payload []byte, from NodeID, local bool) {
	rt := e.routes.Load()
	ng := 0
	deliver := false
	for _, d := range h.Dests() {
		if d == e.cfg.Node {
			deliver = true
			continue
		}
		nh, ok := rt.next[d]
		if !ok || nh == e.cfg.Node {
			e.m.drops[dropNoRoute].Inc()
			continue
		}
		g := -1
		for i := 0; i < ng; i++ {
			if s.groups[i].next == nh {
				g = i
				break
			}
		}
		if g < 0 {
			g = ng
			ng++
			s.groups[g].next, s.groups[g].n = nh, 0
		}
		s.groups[g].dsts[s.groups[g].n] = d
		s.groups[g].n++
	}
	if deliver && local && h.Kind == relaywire.KindMedia && e.duplicate(h, s.now) {
		// accepted already (another parent during a tree change): neither
		// delivered nor forwarded by a holder; the destinations beyond
		// this hop check their own windows
		deliver = false
	}
	var fw *forward
	if deliver && local && h.Kind == relaywire.KindMedia {
		fw = e.lookupForward(h)
	}
	if deliver && local && (fw == nil || fw.deliver) {
		e.m.delivered.Inc()
		if h.Kind == relaywire.KindMedia {
			e.cfg.Local.DeliverMedia(h.Room, h.Publisher, h.Track, h.Layer, payload)
		} else {
			e.cfg.Local.DeliverFeedback(h.Room, h.Publisher, h.Track, h.Layer, h.Source, payload)
		}
	}
	if ng == 0 && fw == nil {
		return
	}
	hop := h.HopLimit
	if local { // a message that arrived: this hop spends one
		if hop <= 1 {
			e.m.drops[dropHopLimit].Add(float64(max(ng, 1)))
			return
		}
		hop--
	}
	e.sendGroups(s, h, payload, ng, hop, local)
	if fw != nil {
		e.fanOut(s, h, payload, fw, hop)
	}
}

// fanOut sends a message that arrived for a track this node holds on to
// the nodes it forwards the track to, as a message of the same source
// with the hop limit hop (already spent), skipping the nodes the message
// was addressed to already and its source.
func (e *Endpoint) fanOut(s *scratch, h *relaywire.Header, payload []byte, fw *forward, hop uint8) {
	fh := *h
	fh.HopLimit = hop
	fh.NDst = 0
	s.fanning = true
	defer func() { s.fanning = false }()
	flush := func() {
		if fh.NDst > 0 {
			e.route(s, &fh, payload, 0, false)
			fh.NDst = 0
		}
	}
	for _, d := range fw.dsts {
		if d == h.Source || slices.Contains(h.Dests(), d) {
			continue
		}
		fh.Dst[fh.NDst] = d
		fh.NDst++
		if int(fh.NDst) == relaywire.MaxDst {
			flush()
		}
	}
	flush()
}

// sendGroups sends one copy of h to each of the ng next hops route
// grouped its destinations by, with the hop limit hop.
func (e *Endpoint) sendGroups(s *scratch, h *relaywire.Header, payload []byte, ng int, hop uint8, local bool) {
	peers := *e.peers.Load()
	for i := 0; i < ng; i++ {
		g := &s.groups[i]
		p := peers[g.next]
		if p == nil {
			e.m.drops[dropNoRoute].Inc()
			continue
		}
		fh := *h
		fh.HopLimit = hop
		fh.NDst = g.n
		copy(fh.Dst[:], g.dsts[:g.n])
		// only the relay header is encoded here, per next hop; the
		// payload, which every next hop shares, is copied once per next
		// hop, with the header, into the link's send history
		// (recovery.Sender.NextData), and each frame is sealed from that
		// copy. The reader loop's headers go to its pending slab,
		// numbered and sealed at the end of the read batch (the payloads
		// stay in the reader loop's buffers until then: releaseRx)
		buf := s.hdr[:0]
		if s.out.batch {
			if len(s.pend) == cap(s.pend) || cap(s.pslab)-len(s.pslab) < udpio.MaxPacket {
				e.sealPending(s)
			}
			buf = s.pslab
		}
		start := len(buf)
		hdr, err := relaywire.AppendHeader(buf, &fh)
		if err != nil || len(hdr)-start+len(payload) > relaywire.MaxShardLen-2 {
			e.m.drops[dropMalformed].Inc()
			continue
		}
		if s.out.batch {
			s.pslab = hdr
			s.pend = append(s.pend, pending{p: p, off: start, end: len(hdr), payload: payload})
		} else {
			s.hdr = hdr[:0]
			e.sendData(p, hdr, payload, s.now, &s.out)
		}
		if local || s.fanning {
			s.forwarded++
		} else {
			s.sent++
		}
	}
}

// sealPending numbers, seals and queues the reader loop's pending data
// messages, next hop by next hop (in order for each), each next hop's under
// one hold of its lock and its link's.
func (e *Endpoint) sealPending(s *scratch) {
	for i := range s.pend {
		p := s.pend[i].p
		if p == nil {
			continue // sealed with an earlier next hop's
		}
		p.mu.Lock()
		p.link.Hold()
		p.held = true
		for j := i; j < len(s.pend); j++ {
			if m := &s.pend[j]; m.p == p {
				e.number(p, s.pslab[m.off:m.end], m.payload, s.now, &s.out)
				m.p, m.payload = nil, nil
			}
		}
		p.held = false
		p.link.Release()
		p.mu.Unlock()
	}
	s.pend, s.pslab = s.pend[:0], s.pslab[:0]
	e.reuseRx(s)
	e.countOut(s)
}

// countOut adds the copies s routed to the metrics.
func (e *Endpoint) countOut(s *scratch) {
	if s.forwarded > 0 {
		e.m.forwarded.Add(float64(s.forwarded))
		s.forwarded = 0
	}
	if s.sent > 0 {
		e.m.sent.Add(float64(s.sent))
		s.sent = 0
	}
}

// endBatch ends the reader loop's batch: the pending messages sealed, and
// every frame queued sent.
func (e *Endpoint) endBatch(s *scratch) {
	e.releaseRx(s)
	e.sealPending(s)
	e.flush(&s.out)
}

// sendData numbers the message hdr ‖ payload (a relay header and its
// payload) on p's link, seals it and any parity its FEC group closed, and
// queues them.
func (e *Endpoint) sendData(p *peer, hdr, payload []byte, now time.Time, out *outQ) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e.number(p, hdr, payload, now, out)
}

// number is sendData with p.mu held. The message is copied once, into
// the link's send history, and sealed from there.
func (e *Endpoint) number(p *peer, hdr, payload []byte, now time.Time, out *outQ) {
	p.nParity = 0
	body, err := p.sender(now).NextData(hdr, payload, now, p.body, p.emit)
	if err != nil {
		e.m.drops[dropMalformed].Inc()
		return
	}
	p.dataSent++
	e.queue(p, relaywire.TypeData, body, out)
	e.queueParity(p, out)
}

// queueParity sends the parity bodies p.emit collected. p.mu is held.
func (e *Endpoint) queueParity(p *peer, out *outQ) {
	for i := 0; i < p.nParity; i++ {
		e.queue(p, relaywire.TypeParity, p.parity[i], out)
		e.m.parity.Inc()
	}
	p.nParity = 0
}

// queue seals body for p into the next message of out, flushing out when
// it is full.
func (e *Endpoint) queue(p *peer, t relaywire.Type, body []byte, out *outQ) {
	if p.blocked.Load() {
		e.m.drops[dropBlocked].Inc()
		return
	}
	if out.n == len(out.msgs) {
		e.flush(out)
	}
	m := &out.msgs[out.n]
	var f []byte
	if p.held {
		f = p.link.SealHeld(m.Buf[:0], t, body)
	} else {
		f = p.link.Seal(m.Buf[:0], t, body)
	}
	if len(f) > cap(m.Buf) {
		e.m.drops[dropSendQueue].Inc()
		return
	}
	m.N, m.Addr = len(f), p.addr
	out.n++
	if !out.batch {
		e.flush(out)
	}
}

func (e *Endpoint) flush(out *outQ) {
	if out.n == 0 {
		return
	}
	if out.n == 1 {
		_ = e.conn.WriteTo(out.msgs[0].Payload(), out.msgs[0].Addr)
	} else {
		_, _ = e.conn.WriteBatch(out.msgs[:out.n])
	}
	out.n = 0
}

// Run serves the relay port until ctx ends or Close.
func (e *Endpoint) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		e.timers(ctx)
	}()
	stop := context.AfterFunc(ctx, func() { _ = e.Close() })
	defer stop()
	err := e.readLoop()
	_ = e.Close()
	wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Activity is a count that moves while media arrives (data frames from
// peers, client media), not with probes alone: the SFU's scheduler poll
// runs while it moves.
func (e *Endpoint) Activity() uint64 { return e.media.Load() }

// Close closes the relay port; Run returns. It is idempotent.
func (e *Endpoint) Close() error {
	var err error
	e.closeOnce.Do(func() {
		close(e.closed)
		err = e.conn.Close()
	})
	return err
}

func (e *Endpoint) readLoop() error {
	size := udpio.MaxPacket
	if gro, _ := e.conn.Coalescing(); gro {
		size = udpio.MaxCoalesced
	}
	msgs := udpio.NewMessages(loopReads, size)
	for {
		n, err := e.conn.ReadBatch(msgs)
		if err != nil {
			return err
		}
		for i := range msgs[:n] {
			// a read the kernel coalesced is several frames of one
			// sender: each is opened, checked and counted on its own
			m := &msgs[i]
			if m.Seg > 0 {
				e.m.coalesced.Inc()
			}
			for b, off := m.Datagram(0); len(b) > 0; b, off = m.Datagram(off) {
				e.handleFrame(b, m.Addr, e.loop)
			}
		}
		e.endBatch(e.loop)
	}
}

// handleFrame is one received frame's path: the checks, the link's
// recovery; routing of every message it yields follows when the reader
// loop releases the peer's locks (releaseRx: at the latest at the end of
// the read batch, endBatch).
func (e *Endpoint) handleFrame(b []byte, from netip.AddrPort, s *scratch) {
	lh, err := relaywire.ParseLinkHeader(b)
	if err != nil {
		e.countOpenErr(err) // short, or another version
		return
	}
	if lh.Type >= relaywire.TypeHello {
		e.releaseRx(s)
		e.handleClient(b, from, lh.Type, s)
		return
	}
	p := (*e.peers.Load())[lh.Sender]
	if p == nil {
		e.m.drops[dropUnknownPeer].Inc()
		return
	}
	if from != p.addr {
		e.m.drops[dropAddress].Inc()
		return
	}
	if p.blocked.Load() {
		e.m.drops[dropBlocked].Inc()
		return
	}
	if e.rx.p != p || e.rx.n == rxRun || len(e.rx.slab) > cap(e.rx.slab)/2 {
		e.releaseRx(s)
		p.mu.Lock()
		p.link.Hold()
		p.held = true
		e.rx.p = p
	}
	e.rx.n++
	_, body, err := p.link.OpenHeld(b)
	if err != nil {
		e.countOpenErr(err)
		return
	}
	now := time.Now()
	s.now = now
	switch lh.Type {
	case relaywire.TypeData:
		e.media.Add(1)
		seq, msg, err := relaywire.ParseData(body)
		if err != nil {
			e.m.drops[dropMalformed].Inc()
			break
		}
		rcv := p.receiver()
		before := rcv.Recovered
		rcv.OnData(seq, msg, now, e.rxAdd)
		if n := rcv.Recovered - before; n > 0 {
			e.m.recovered.Add(float64(n))
		}
	case relaywire.TypeParity:
		var par relaywire.Parity
		if relaywire.ParseParity(body, &par) != nil {
			e.m.drops[dropMalformed].Inc()
			break
		}
		rcv := p.receiver()
		before := rcv.Recovered
		rcv.OnParity(&par, e.rxAdd)
		if n := rcv.Recovered - before; n > 0 {
			e.m.recovered.Add(float64(n))
		}
	case relaywire.TypeNack:
		seqs, err := relaywire.ParseNack(body, p.nacks)
		if err != nil {
			e.m.drops[dropMalformed].Inc()
			break
		}
		for _, q := range seqs {
			if p.snd == nil {
				break // nothing was sent on this link
			}
			if body, ok := p.snd.RetransmitData(q); ok {
				e.queue(p, relaywire.TypeData, body, &s.out)
				e.m.retransmit.Inc()
			}
		}
	case relaywire.TypeProbe:
		pr, err := relaywire.ParseProbe(body)
		if err != nil {
			e.m.drops[dropMalformed].Inc()
			break
		}
		if p.rcv != nil { // no data received: nothing to measure
			if l := p.rcv.TakeLoss(); l >= 0 {
				p.dataLoss += (l - p.dataLoss) * 0.3
			} else {
				// No data since the last probe: once routes leave a lossy
				// link no data comes back to correct the figure, which
				// would keep the link priced lossy for good. It fades;
				// the probes' own loss stands for the link meanwhile.
				p.dataLoss *= 0.7
			}
		}
		p.body = relaywire.AppendEcho(p.body[:0], relaywire.Echo{ID: pr.ID, Sent: pr.Sent, LossPPM: uint32(p.dataLoss * 1e6)})
		e.queue(p, relaywire.TypeEcho, p.body, &s.out)
	case relaywire.TypeEcho:
		ec, err := relaywire.ParseEcho(body)
		if err != nil {
			e.m.drops[dropMalformed].Inc()
			break
		}
		p.prb.OnEcho(ec, now)
		if p.snd != nil {
			p.tuneFEC(now)
		}
	}
}

// releaseRx gives back the locks the reader loop holds for a run of
// frames from one peer (handleFrame), then routes the messages they
// carried: with no lock held, since delivery may call Send.
func (e *Endpoint) releaseRx(s *scratch) {
	p := e.rx.p
	if p == nil {
		return
	}
	p.held = false
	p.link.Release()
	p.mu.Unlock()
	e.rx.p, e.rx.n = nil, 0
	for i, off := range e.rx.off {
		end := len(e.rx.slab)
		if i+1 < len(e.rx.off) {
			end = e.rx.off[i+1]
		}
		e.handleMessage(e.rx.slab[off:end], p.id, s)
	}
	e.rx.off = e.rx.off[:0]
	// the messages routed in this read batch and not yet sealed hold
	// their payloads in the slab (pending): it is reused once they are
	// sealed, at the end of the batch or here when it is half full
	if len(s.pend) > 0 && len(e.rx.slab) > cap(e.rx.slab)/2 {
		e.sealPending(s)
	}
	e.reuseRx(s)
}

// reuseRx empties the reader loop's slab of opened messages once nothing
// refers to it: no message waits in it for its dispatch (rx.off) nor, routed
// already, for its seal (s.pend holds its payload).
func (e *Endpoint) reuseRx(s *scratch) {
	if s == e.loop && len(e.rx.off) == 0 && len(s.pend) == 0 {
		e.rx.slab = e.rx.slab[:0]
	}
}

func (e *Endpoint) rxAdd(_ uint32, msg []byte) { e.rx.add(msg) }

func (e *Endpoint) handleMessage(msg []byte, from NodeID, s *scratch) {
	payload, err := relaywire.ParseHeader(msg, &s.h)
	if err != nil {
		e.m.drops[dropMalformed].Inc()
		return
	}
	if s.h.Source == e.cfg.Node {
		e.m.drops[dropLoop].Inc()
		return
	}
	e.route(s, &s.h, payload, from, true)
}

// timers runs every link's clocks: FEC groups closing, NACKs, probes.
func (e *Endpoint) timers(ctx context.Context) {
	t := time.NewTicker(e.cfg.Tick)
	defer t.Stop()
	// The reader loop owns the Conn's batched writes (WriteBatch is not
	// safe for concurrent use); the timers' few frames go one by one.
	s := newScratch(false)
	var lastClients time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.closed:
			return
		case now := <-t.C:
			for _, p := range *e.peers.Load() {
				e.tickPeer(p, now, s)
			}
			e.flush(&s.out)
			if now.Sub(lastClients) >= time.Second {
				lastClients = now
				e.tickClients(now)
				e.seqs.sweep(now.Add(-SeqIdle))
			}
		}
	}
}

func (e *Endpoint) tickPeer(p *peer, now time.Time, s *scratch) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var vals [4]uint64
	if p.snd != nil {
		vals[0] = p.snd.Refused
	}
	if p.rcv != nil {
		vals[1], vals[2], vals[3] = p.rcv.GivenUp, p.rcv.Late, p.rcv.Duplicates
	}
	for i, v := range vals {
		if d := v - p.counted[i]; d > 0 {
			[4]prometheus.Counter{e.m.refused, e.m.lost, e.m.late, e.m.dups}[i].Add(float64(d))
			p.counted[i] = v
		}
	}
	p.nParity = 0
	if p.snd != nil {
		p.snd.Tick(now, p.body, p.emit)
		e.queueParity(p, &s.out)
	}
	st := p.prb.Stats(now)
	p.nacks = p.nacks[:0]
	if p.rcv != nil {
		p.nacks = p.rcv.NackDue(now, min(st.RTT, st.LastRTT), p.nacks)
	}
	if len(p.nacks) > 0 {
		if b, err := relaywire.AppendNack(p.body[:0], p.nacks); err == nil {
			p.body = b
			e.queue(p, relaywire.TypeNack, p.body, &s.out)
		}
	}
	if p.prb.Due(now) {
		p.body = relaywire.AppendProbe(p.body[:0], p.prb.Probe(now))
		e.queue(p, relaywire.TypeProbe, p.body, &s.out)
	}
}

// LinkStats returns what this node measured of each neighbour's link (to
// report to the controller, which computes the routes).
func (e *Endpoint) LinkStats() map[NodeID]probe.Stats {
	now := time.Now()
	out := map[NodeID]probe.Stats{}
	for id, p := range *e.peers.Load() {
		p.mu.Lock()
		out[id] = p.prb.Stats(now)
		p.mu.Unlock()
	}
	return out
}
