package signal

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// BusBackend is the Backend over the NATS bus (internal/bus, docs/bus.md):
// it keeps the table of announced nodes, calls nodes with bus requests,
// and relays each session's node messages and its room's events.
type BusBackend struct {
	c        *bus.Client
	capacity int
	now      func() time.Time
	table    bus.NodeTable
	nodeSub  *bus.Subscription
	downSub  *bus.Subscription // the leading controller's NodeDown

	mu     sync.Mutex // guards rooms, closed, down, placed
	rooms  map[string]*roomSubs
	closed bool
	down   func(node, reason string)
	// placed holds, per node, when this server sent it each join of the
	// last placedWindow: a node's announced load lags the joins made
	// since, and a burst of joins between two announcements would
	// otherwise all go to the node that looked idlest.
	placed map[string][]time.Time
	// refusedClaims counts balanced group claims refused (grouplink.go).
	refusedClaims atomic.Uint64

	stop chan struct{} // closed by Close: ends the sweeper
	wg   sync.WaitGroup
}

// nodeSweepInterval is how often the backend looks for nodes whose
// announcements stopped: a killed node is declared dead between
// bus.NodeExpiry and NodeExpiry + nodeSweepInterval after its last
// announcement.
const nodeSweepInterval = 200 * time.Millisecond

// roomSubs is one room's event subscription and the sinks of this signal
// server's sessions in it.
type roomSubs struct {
	sub   *bus.Subscription
	sinks map[string]func(NodeEvent) // by session id
	// parts and tracks are the room as its events told it since this
	// server subscribed, for sessions that join later (Snapshot).
	parts  map[string]Participant // by session id
	tracks map[string][]Track     // by session id
	// partNode is the node each participant is on, to forget the
	// participants of a node that died (no left event comes from it).
	partNode map[string]string
}

// DefaultNodeCapacity is the peer count at which a node counts as full when
// no capacity is configured.
const DefaultNodeCapacity = 1000

// NewBusBackend starts following node announcements on c. capacity is the
// number of peers at which a node counts as full (load 1); zero means
// DefaultNodeCapacity. It does not own c.
func NewBusBackend(c *bus.Client, capacity int) (*BusBackend, error) {
	if capacity <= 0 {
		capacity = DefaultNodeCapacity
	}
	b := &BusBackend{c: c, capacity: capacity, now: time.Now, rooms: map[string]*roomSubs{}, placed: map[string][]time.Time{},
		stop: make(chan struct{})}
	sub, err := c.SubscribeNodes(func(a bus.NodeAnnounce) { b.table.Update(a, b.now()) })
	if err != nil {
		return nil, err
	}
	b.nodeSub = sub
	// The leading controller's verdict on a dead node (docs/cluster.md)
	// acts as this server's own detection does; a draining node moves its
	// sessions itself, spread over its drain period, so "draining" is not
	// acted on here.
	if b.downSub, err = c.SubscribeNodeDown(func(d bus.NodeDown) {
		if d.Reason == bus.NodeDownDead {
			b.nodeDead(d.Node)
		}
	}); err != nil {
		sub.Unsubscribe()
		return nil, err
	}
	// Make the subscriptions effective at the server before returning.
	_ = c.Conn().Flush()
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		b.sweep()
	}()
	return b, nil
}

// OnNodeDown makes the backend call down(node, RejoinNodeFailed) for
// every node whose announcements stop (bus.NodeExpiry). Server.New
// wires it to Server.NodeDown.
func (b *BusBackend) OnNodeDown(down func(node, reason string)) {
	b.mu.Lock()
	b.down = down
	b.mu.Unlock()
}

// sweep declares dead the nodes that went silent, until Close.
func (b *BusBackend) sweep() {
	t := time.NewTicker(nodeSweepInterval)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		}
		for _, node := range b.table.Sweep(b.now()) {
			b.nodeDead(node)
		}
	}
}

// nodeDead forgets node's participants and tells the server (OnNodeDown).
// The server acts once per death: a second call for the node is a no-op.
func (b *BusBackend) nodeDead(node string) {
	b.table.Remove(node)
	b.forgetNode(node)
	b.mu.Lock()
	down := b.down
	b.mu.Unlock()
	if down != nil {
		down(node, RejoinNodeFailed)
	}
}

// forgetNode drops the participants and tracks of node from the rooms'
// records: a dead node sends no left events.
func (b *BusBackend) forgetNode(node string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.placed, node)
	for _, r := range b.rooms {
		for id, n := range r.partNode {
			if n == node {
				delete(r.parts, id)
				delete(r.tracks, id)
				delete(r.partNode, id)
			}
		}
	}
}

// Close stops following announcements and room events. It is idempotent.
func (b *BusBackend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	rooms := b.rooms
	b.rooms = map[string]*roomSubs{}
	b.mu.Unlock()
	close(b.stop)
	b.wg.Wait()
	b.nodeSub.Unsubscribe()
	b.downSub.Unsubscribe()
	for _, r := range rooms {
		r.sub.Unsubscribe()
	}
	return nil
}

// Nodes returns the live nodes.
func (b *BusBackend) Nodes() []Node {
	now := b.now()
	live := b.table.Live(now)
	out := make([]Node, 0, len(live))
	for _, a := range live {
		peers := a.Load.Peers + b.recentJoins(a.Node, now)
		n := Node{ID: a.Node, Region: a.Region, Load: float64(peers) / float64(b.capacity), Rooms: a.Rooms,
			Cascade: a.Relay != "", Group: a.Group}
		if ap, err := netip.ParseAddrPort(a.UDP); err == nil && !ap.Addr().IsUnspecified() {
			n.Public = ap.Addr().Unmap()
		}
		if a.Draining {
			n.Load = 1
		}
		out = append(out, n)
	}
	return out
}

// placedWindow is how long a join this server sent counts toward its
// node's load on top of the node's announced peers: two announcement
// intervals, by when the node's own count includes it. Counting a join
// twice for that long errs toward spreading a burst.
const placedWindow = 2 * bus.AnnounceInterval

// notePlaced records a join sent to node at now.
func (b *BusBackend) notePlaced(node string, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.placed[node] = append(b.pruneLocked(node, now), now)
}

// recentJoins is how many joins this server sent node within placedWindow.
func (b *BusBackend) recentJoins(node string, now time.Time) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.pruneLocked(node, now))
}

// pruneLocked drops node's joins older than placedWindow and returns the
// rest (oldest first).
func (b *BusBackend) pruneLocked(node string, now time.Time) []time.Time {
	ts := b.placed[node]
	i := 0
	for i < len(ts) && now.Sub(ts[i]) > placedWindow {
		i++
	}
	if i == len(ts) {
		delete(b.placed, node)
		return nil
	}
	ts = ts[i:]
	b.placed[node] = ts
	return ts
}

// Join subscribes to the session's messages and its room's events; the node
// hears of the session with the link's first Offer. A node of a balanced
// group (Node.Group) brings its whole group: the session is offered to
// every live node of it (grouplink.go).
func (b *BusBackend) Join(_ context.Context, node Node, req JoinRequest, sink func(NodeEvent)) (Link, error) {
	if !bus.ValidName(req.Session) || !bus.ValidName(req.Room) {
		return nil, fmt.Errorf("%w: %w", ErrMessage, bus.ErrBadSubjectToken)
	}
	b.notePlaced(node.ID, b.now())
	l := &busLink{b: b, node: node.ID, req: req, sink: sink}
	members := []string{node.ID}
	if node.Group != "" {
		members = b.groupMembers(node)
		l.group = members
	}
	for _, n := range members {
		sub, err := b.c.SubscribeSession(n, req.Session, l.sessionHandler(n, sink))
		if err != nil {
			l.unsubscribe()
			return nil, fmt.Errorf("%w: %w", ErrNode, err)
		}
		l.subs = append(l.subs, sub)
	}
	if err := b.addSink(req.Room, req.Session, sink); err != nil {
		l.unsubscribe()
		return nil, fmt.Errorf("%w: %w", ErrNode, err)
	}
	// The node may send an offer as soon as it has the join: make the
	// subscriptions effective at the server first.
	_ = b.c.Conn().Flush()
	return l, nil
}

// sessionHandler is what node's messages about the link's session do: a
// group node's claim goes to claim; the rest reaches the client only from
// the node that holds the session now.
func (l *busLink) sessionHandler(node string, sink func(NodeEvent)) func(bus.SessionMessage) {
	return func(m bus.SessionMessage) {
		if m.Type == bus.SessionClaim {
			l.claim(node)
			return
		}
		if l.target() != node {
			return
		}
		switch m.Type {
		case bus.SessionOffer:
			sink(NodeEvent{Kind: NodeOffer, SDP: m.SDP})
		case bus.SessionCandidate:
			var c Candidate
			if m.Candidate != nil {
				c = fromBusCandidate(*m.Candidate)
			}
			sink(NodeEvent{Kind: NodeCandidate, Candidate: c})
		case bus.SessionEvent:
			if ev, ok := roomEvent(*m.Event, ""); ok {
				sink(ev)
			}
		case bus.SessionRejoin:
			sink(NodeEvent{Kind: NodeRejoin, Node: node, Reason: m.Reason})
		case bus.SessionError, bus.SessionClosed:
			var err error = errors.New("closed by the node")
			if m.Error != nil {
				err = m.Error
			}
			sink(NodeEvent{Kind: NodeClosed, Err: err})
		}
	}
}

func (b *BusBackend) addSink(room, session string, sink func(NodeEvent)) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errors.New("backend closed")
	}
	r := b.rooms[room]
	if r == nil {
		r = &roomSubs{sinks: map[string]func(NodeEvent){}, parts: map[string]Participant{}, tracks: map[string][]Track{},
			partNode: map[string]string{}}
		sub, err := b.c.SubscribeRoomEvents(room, func(e bus.RoomEvent) { b.roomEvent(room, e) })
		if err != nil {
			return err
		}
		r.sub = sub
		b.rooms[room] = r
	}
	r.sinks[session] = sink
	return nil
}

func (b *BusBackend) removeSink(room, session string) {
	b.mu.Lock()
	r := b.rooms[room]
	if r == nil {
		b.mu.Unlock()
		return
	}
	delete(r.sinks, session)
	if len(r.sinks) > 0 {
		b.mu.Unlock()
		return
	}
	delete(b.rooms, room)
	b.mu.Unlock()
	r.sub.Unsubscribe()
}

// roomEvent relays e to every local session in room, except events about a
// session to that session itself (a client knows it joined).
func (b *BusBackend) roomEvent(room string, e bus.RoomEvent) {
	ev, ok := roomEvent(e, "")
	if !ok {
		return
	}
	b.mu.Lock()
	r := b.rooms[room]
	var sinks []func(NodeEvent)
	if r != nil {
		r.record(ev, e.Node)
		for id, s := range r.sinks {
			if id != e.Session || e.Type == bus.EventActiveSpeaker {
				sinks = append(sinks, s)
			}
		}
	}
	b.mu.Unlock()
	for _, s := range sinks {
		s(ev)
	}
}

// record keeps the room's participants and tracks up to date.
func (r *roomSubs) record(ev NodeEvent, node string) {
	id := ev.Participant.ID
	switch {
	case ev.Kind == NodeParticipant && ev.Event == EventJoined:
		r.parts[id] = ev.Participant
		r.partNode[id] = node
	case ev.Kind == NodeParticipant && ev.Event == EventLeft:
		delete(r.parts, id)
		delete(r.tracks, id)
		delete(r.partNode, id)
	case ev.Kind == NodeTrack && ev.Event == EventPublished:
		r.parts[id] = ev.Participant
		r.partNode[id] = node
		r.tracks[id] = append(r.tracks[id], ev.Track)
	case ev.Kind == NodeTrack && ev.Event == EventUnpublished:
		ts := r.tracks[id]
		for i, t := range ts {
			if t.ID == ev.Track.ID {
				r.tracks[id] = append(ts[:i:i], ts[i+1:]...)
				break
			}
		}
	}
}

// snapshot returns the room's other participants and their tracks as the
// events a session joining now missed.
func (b *BusBackend) snapshot(room, self string) []NodeEvent {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.rooms[room]
	if r == nil {
		return nil
	}
	var out []NodeEvent
	for id, p := range r.parts {
		if id == self {
			continue
		}
		out = append(out, NodeEvent{Kind: NodeParticipant, Event: EventJoined, Participant: p})
		for _, t := range r.tracks[id] {
			out = append(out, NodeEvent{Kind: NodeTrack, Event: EventPublished, Participant: p, Track: t})
		}
	}
	return out
}

// Snapshot returns the participants and tracks of the link's room that
// this signal server has heard of, as events, so that a joining client can
// name the tracks it is about to receive. (Optional Link capability.)
func (l *busLink) Snapshot() []NodeEvent { return l.b.snapshot(l.req.Room, l.req.Session) }

// roomEvent converts a bus room event to a session's NodeEvent.
func roomEvent(e bus.RoomEvent, _ string) (NodeEvent, bool) {
	p := Participant{ID: e.Session, Identity: e.Identity}
	switch e.Type {
	case bus.EventParticipantJoined:
		return NodeEvent{Kind: NodeParticipant, Event: EventJoined, Participant: p}, true
	case bus.EventParticipantLeft:
		return NodeEvent{Kind: NodeParticipant, Event: EventLeft, Participant: p}, true
	case bus.EventTrackPublished, bus.EventTrackUnpublished:
		ev := EventPublished
		if e.Type == bus.EventTrackUnpublished {
			ev = EventUnpublished
		}
		t := e.Track
		return NodeEvent{Kind: NodeTrack, Event: ev, Participant: p,
			Track: Track{ID: t.ID, StreamID: t.StreamID, Kind: t.Kind, Codec: t.Codec, Layers: t.Layers}}, true
	case bus.EventActiveSpeaker:
		sp := make([]Speaker, 0, len(e.Speakers))
		for _, s := range e.Speakers {
			sp = append(sp, Speaker{ID: s.Session, Identity: s.Identity, Level: s.Level})
		}
		return NodeEvent{Kind: NodeSpeakers, Speakers: sp}, true
	}
	return NodeEvent{}, false
}

func fromBusCandidate(c bus.Candidate) Candidate {
	out := Candidate{Candidate: c.Candidate, SDPMid: c.SDPMid, SDPMLineIndex: c.SDPMLineIndex}
	if c.UsernameFragment != nil {
		out.UsernameFragment = *c.UsernameFragment
	}
	return out
}

// fromBus maps a node's error to signaling's classes: a refused request is
// the client's to fix (bad-request or forbidden, the session goes on);
// anything else ends the session as unavailable.
func fromBus(err error) error {
	switch bus.StatusOf(err) {
	case bus.StatusBadRequest, bus.StatusConflict, bus.StatusNotFound:
		return fmt.Errorf("%w: %w", ErrRejected, err)
	case bus.StatusUnauthorized:
		return fmt.Errorf("%w: %w", ErrForbidden, err)
	default:
		return fmt.Errorf("%w: %w", ErrNode, err)
	}
}

// busLink is one session on a node.
type busLink struct {
	b    *BusBackend
	req  JoinRequest
	subs []*bus.Subscription // the session's messages, one per node
	sink func(NodeEvent)
	// group is the balanced group's live nodes the session is offered to,
	// the placed node first; nil for a plain session.
	group []string

	mu     sync.Mutex // guards node, joined, ufrag, closed, offered, winner
	node   string     // the node that holds the session (a group's: the winner, once one claimed)
	joined bool
	ufrag  string
	closed bool
	// offered are the group nodes that answered the join; winner is the
	// node whose claim won ("" until one claimed).
	offered map[string]bool
	winner  string
}

// target is the node that holds the session now.
func (l *busLink) target() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.node
}

func (l *busLink) unsubscribe() {
	for _, s := range l.subs {
		s.Unsubscribe()
	}
}

func (l *busLink) Offer(ctx context.Context, sdp, ufrag string) (string, error) {
	l.mu.Lock()
	joined, old, node := l.joined, l.ufrag, l.node
	l.mu.Unlock()
	if l.group != nil && !joined {
		return l.offerGroup(ctx, sdp, ufrag)
	}
	if ufrag != old {
		// Ufrag routing: the session's ufrag goes to every node, so whichever node
		// behind a balancer sees the first binding request knows it.
		_ = l.b.c.AnnounceSession(bus.SessionAnnounce{Session: l.req.Session, Room: l.req.Room, Node: node,
			Ufrag: ufrag, Time: l.b.now()})
	}
	req := bus.Request{Type: bus.RequestOffer, Session: l.req.Session, SDP: sdp}
	if !joined {
		req = bus.Request{Type: bus.RequestJoin, Session: l.req.Session, Join: &bus.Join{Room: l.req.Room,
			Identity: l.req.Identity, Publish: l.req.Publish, Subscribe: l.req.Subscribe, Offer: sdp,
			ClientAddr: l.req.Client}}
	}
	rep, err := l.b.c.Request(ctx, node, req)
	if err != nil {
		return "", fromBus(err)
	}
	if rep.SDP == "" {
		return "", fmt.Errorf("%w: node %s answered no sdp", ErrNode, node)
	}
	l.mu.Lock()
	l.joined, l.ufrag = true, ufrag
	l.mu.Unlock()
	return rep.SDP, nil
}

func (l *busLink) Answer(ctx context.Context, sdp string) error {
	return l.send(ctx, bus.Request{Type: bus.RequestAnswer, Session: l.req.Session, SDP: sdp})
}

// send sends req to the node, its error mapped to signaling's classes.
func (l *busLink) send(ctx context.Context, req bus.Request) error {
	if _, err := l.b.c.Request(ctx, l.target(), req); err != nil {
		return fromBus(err)
	}
	return nil
}

// sendJoined is send for a request that needs the session on the node:
// what names one before the first offer is refused (ErrState).
func (l *busLink) sendJoined(ctx context.Context, what string, req bus.Request) error {
	l.mu.Lock()
	joined := l.joined
	l.mu.Unlock()
	if !joined {
		// Browsers trickle only after their offer; one arriving earlier has
		// no session to go to.
		return fmt.Errorf("%w: %s before the first offer", ErrState, what)
	}
	return l.send(ctx, req)
}

func (l *busLink) Candidate(ctx context.Context, c Candidate) error {
	req := bus.Request{Type: bus.RequestCandidate, Session: l.req.Session}
	if c.Candidate != "" {
		bc := bus.Candidate{Candidate: c.Candidate, SDPMid: c.SDPMid, SDPMLineIndex: c.SDPMLineIndex}
		if c.UsernameFragment != "" {
			u := c.UsernameFragment
			bc.UsernameFragment = &u
		}
		req.Candidate = &bc
	}
	if l.group != nil {
		return l.candidateGroup(ctx, req)
	}
	return l.sendJoined(ctx, "candidate", req)
}

// Layer sends the client's layer request to the node.
func (l *busLink) Layer(ctx context.Context, r LayerRequest) error {
	return l.sendJoined(ctx, "layer", bus.Request{Type: bus.RequestLayer, Session: l.req.Session, Layer: &bus.LayerRequest{Track: r.Track,
		StreamID: r.StreamID, MaxLayer: r.MaxLayer, Width: r.Width, Height: r.Height}})
}

// Close leaves the room on the node (bounded by a short timeout) and drops
// the subscriptions. It is idempotent.
func (l *busLink) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	joined, ufrag, node := l.joined, l.ufrag, l.node
	others := l.unclaimedLocked()
	l.mu.Unlock()
	var err error
	if joined {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err = l.b.c.Request(ctx, node, bus.Request{Type: bus.RequestLeave, Session: l.req.Session})
		l.leaveAll(ctx, others)
		cancel()
		_ = l.b.c.AnnounceSession(bus.SessionAnnounce{Session: l.req.Session, Room: l.req.Room, Node: node,
			Ufrag: ufrag, Gone: true, Time: l.b.now()})
	}
	l.unsubscribe()
	l.b.removeSink(l.req.Room, l.req.Session)
	if err != nil && bus.StatusOf(err) != bus.StatusNotFound {
		return fromBus(err)
	}
	return nil
}
