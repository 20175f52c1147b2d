// Package controller is the controller role (docs/cluster.md): it knows
// every SFU node and every room from the bus, keeps the node registry and
// the room directory in the cluster's JetStream buckets (internal/cluster),
// and declares nodes dead. Two or more run; exactly one leads, through the
// leadership lease, and only the leader writes or publishes. A new leader
// rebuilds its view from the buckets and the nodes' announcements.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cluster"
	"github.com/traverse-rtc/traverse/internal/config"
)

// Config configures a Controller. Zero values take the documented
// defaults.
type Config struct {
	// ID names this controller in the lease (a bus name). Default
	// HOSTNAME-PID.
	ID string
	// Bus is how to reach the bus, with a controller credential. Its
	// InboxPrefix is set to bus.ControllerInboxPrefix (the only replies a
	// controller may receive).
	Bus bus.Config
	// LeaseTTL is how long leadership lasts unrenewed; the leader renews
	// every third of it. Default 2 s (cluster.DefaultLeaseTTL): a dead
	// leader is replaced within about 2.7 s. Shorter costs more bucket
	// writes and risks a change of leader on a slow bus.
	LeaseTTL time.Duration
	// NodeDeadAfter is how long a node may stay silent before the leader
	// declares it dead (publishes NodeDown, marks its rooms for
	// re-placement). Default 2 s, or three announcement intervals
	// (bus.AnnounceInterval) when that is longer: one lost announcement
	// must not kill a live node.
	NodeDeadAfter time.Duration
	// Replicas of the buckets when the controller makes them; 0: 3 on a
	// cluster of three or more servers, else 1.
	Replicas int
	// QueueLen bounds the announcements and room events waiting for the
	// controller's loop; beyond, they are dropped and counted
	// (traverse_controller_events_dropped_total). Default 4096.
	QueueLen int
	// OpenTimeout bounds New's wait for the buckets (a new cluster's
	// JetStream needs a few seconds to elect its meta leader). Default 30 s.
	OpenTimeout time.Duration
	// Cascade turns on the cascade's control (docs/cascade.md): routes
	// over the nodes' link reports, and each relay node's peers, routes,
	// needs and remote tracks pushed on traverse.cascade.<node>.cmd.
	// Default off.
	Cascade bool
	// CascadeKeyRotation is how often the leader steps the relay links'
	// key epoch (kept in the leader bucket, so a new leader continues from
	// it); frames of the previous epoch stay accepted for the overlap,
	// min(30 s, half of it). Default 1 h.
	CascadeKeyRotation time.Duration
	// Registerer takes the metrics. Default: a private registry.
	Registerer prometheus.Registerer
	// Log defaults to slog.Default().
	Log *slog.Logger
}

func (c *Config) validate() error {
	if c.ID == "" {
		host, _ := os.Hostname()
		c.ID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if !bus.ValidName(c.ID) {
		return fmt.Errorf("%w: id %q: %w", ErrConfig, c.ID, bus.ErrBadSubjectToken)
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	config.Default(&c.LeaseTTL, cluster.DefaultLeaseTTL)
	config.Default(&c.NodeDeadAfter, max(2*time.Second, 3*bus.AnnounceInterval))
	if c.NodeDeadAfter < 2*bus.AnnounceInterval {
		c.Log.Warn("controller: node-dead-after is under two announcement intervals: live nodes will be declared dead",
			"node_dead_after", c.NodeDeadAfter, "announce_interval", bus.AnnounceInterval)
	}
	config.Default(&c.QueueLen, 4096)
	config.Default(&c.CascadeKeyRotation, time.Hour)
	if c.CascadeKeyRotation < time.Second {
		return fmt.Errorf("%w: cascade key rotation %v", ErrConfig, c.CascadeKeyRotation)
	}
	config.Default(&c.OpenTimeout, 30*time.Second)
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	c.Bus.InboxPrefix = bus.ControllerInboxPrefix
	return nil
}

// ErrConfig is returned by New for a configuration it cannot use.
var ErrConfig = errors.New("controller: bad configuration")

// item is one announcement or room event for the loop.
type item struct {
	announce *bus.NodeAnnounce
	event    *bus.RoomEvent
	report   *bus.CascadeReport
	at       time.Time
}

// Controller is one controller process's role.
type Controller struct {
	cfg   Config
	log   *slog.Logger
	bc    *bus.Client
	store *cluster.Store
	lease *cluster.Lease
	m     *metrics
	queue chan item
	subs  []*bus.Subscription

	leading atomic.Uint64 // lease revision while leading, 0 otherwise
	// noRelease (tests) makes Run end without releasing the lease, as a
	// killed process would.
	noRelease bool

	// The view: owned by Run's loop.
	nodes map[string]*nodeView
	rooms map[string]*roomView
	// dirty are rooms whose last write failed (a JetStream stream
	// electing a new leader after a server died refuses writes for a few
	// seconds): written again, or deleted when gone from rooms, at the
	// next check.
	dirty map[string]bool
	// casc is the cascade's view (cascade.go); nil unless Config.Cascade.
	casc *cascadeView

	closeOnce sync.Once
}

type nodeView struct {
	rec       cluster.NodeRecord
	seen      time.Time // last announcement, on this clock
	written   time.Time // last registry write
	announced bool      // heard by this controller (not only read from the registry)
}

type roomView struct {
	rec cluster.RoomRecord
	rev uint64
}

// registryRefresh is how often the leader rewrites an unchanged node's
// record (its load and last_seen).
const registryRefresh = time.Second

// New connects to the bus, opens (making when missing) the buckets and
// starts following announcements and room events.
func New(cfg Config) (*Controller, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	bc, err := bus.Connect(cfg.Bus, cfg.Log)
	if err != nil {
		return nil, err
	}
	c := &Controller{cfg: cfg, log: cfg.Log, bc: bc, m: m,
		queue: make(chan item, cfg.QueueLen), nodes: map[string]*nodeView{}, rooms: map[string]*roomView{},
		dirty: map[string]bool{}}
	push := func(it item) {
		select {
		case c.queue <- it:
		default:
			m.dropped.Inc()
		}
	}
	s1, err := bc.SubscribeNodes(func(a bus.NodeAnnounce) { push(item{announce: &a, at: time.Now()}) })
	if err != nil {
		bc.Close()
		return nil, err
	}
	s2, err := bc.SubscribeRoomEvents("*", func(e bus.RoomEvent) {
		if e.Type == bus.EventParticipantJoined || e.Type == bus.EventParticipantLeft ||
			(cfg.Cascade && (e.Type == bus.EventTrackPublished || e.Type == bus.EventTrackUnpublished)) {
			push(item{event: &e, at: time.Now()})
		}
	})
	if err != nil {
		bc.Close()
		return nil, err
	}
	c.subs = []*bus.Subscription{s1, s2}
	if cfg.Cascade {
		if c.casc, err = newCascadeView(cfg.Registerer); err != nil {
			c.Close()
			return nil, err
		}
		s3, err := bc.SubscribeCascadeReports(func(r bus.CascadeReport) { push(item{report: &r, at: time.Now()}) })
		if err != nil {
			c.Close()
			return nil, err
		}
		c.subs = append(c.subs, s3)
	}
	// The subscriptions come first: what nodes say while the buckets open
	// (a new cluster's JetStream takes seconds) waits in the queue.
	ctx, cancel := context.WithTimeout(context.Background(), cfg.OpenTimeout)
	defer cancel()
	c.store, err = cluster.Open(ctx, bc.Conn(), cluster.Options{Create: true, Replicas: cfg.Replicas})
	if err == nil {
		c.lease, err = c.store.NewLease(cfg.ID, cfg.LeaseTTL, nil)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	m.bad = func() float64 { return float64(bc.BadMessages() + c.store.BadRecords()) }
	return c, nil
}

// ID returns the controller's id.
func (c *Controller) ID() string { return c.cfg.ID }

// Leading returns the lease revision while this controller leads, else 0.
func (c *Controller) Leading() uint64 { return c.leading.Load() }

// Ready reports whether the controller can do its work (its bus
// connection is up); a follower is ready too.
func (c *Controller) Ready() error {
	if !c.bc.Conn().IsConnected() {
		return errors.New("controller: bus disconnected")
	}
	return nil
}

// Run keeps the lease and the view until ctx is done; then, leading, it
// releases the lease so another controller takes over at once.
func (c *Controller) Run(ctx context.Context) error {
	step := time.NewTicker(c.cfg.LeaseTTL / 3)
	defer step.Stop()
	check := time.NewTicker(c.cfg.NodeDeadAfter / 10)
	defer check.Stop()
	var cascade <-chan time.Time
	if c.casc != nil {
		ct := time.NewTicker(cascadeTick)
		defer ct.Stop()
		cascade = ct.C
	}
	c.stepLease(ctx)
	for {
		select {
		case <-ctx.Done():
			c.stopLeading()
			if !c.noRelease {
				rctx, cancel := context.WithTimeout(context.Background(), time.Second)
				err := c.lease.Release(rctx)
				cancel()
				if err != nil {
					c.log.Warn("controller: lease release", "err", err)
				}
			}
			return nil
		case <-step.C:
			c.stepLease(ctx)
		case <-check.C:
			c.check(ctx)
		case now := <-cascade:
			c.cascadeStep(ctx, now)
		case it := <-c.queue:
			c.handle(ctx, it)
		}
	}
}

// check judges the nodes. What arrived while the loop was busy (a lease
// step waits up to LeaseTTL/3 on a bucket whose stream is electing a
// leader) is taken in first: a node is judged by the last announcement
// received, not the last one handled.
func (c *Controller) check(ctx context.Context) {
	c.drain(ctx)
	c.checkNodes(ctx, time.Now())
}

// drain handles the items queued now, and no more: a flood of newer ones
// waits for the loop.
func (c *Controller) drain(ctx context.Context) {
	for n := len(c.queue); n > 0; n-- {
		c.handle(ctx, <-c.queue)
	}
}

// handle takes in one item of the queue: an announcement, a cascade
// report or a room event.
func (c *Controller) handle(ctx context.Context, it item) {
	switch {
	case it.announce != nil:
		c.announced(ctx, *it.announce, it.at)
	case it.report != nil:
		c.cascadeReport(*it.report)
	default:
		c.cascadeEvent(*it.event)
		if it.event.Type == bus.EventParticipantJoined || it.event.Type == bus.EventParticipantLeft {
			c.roomEvent(ctx, *it.event)
		}
	}
}

// stepLease runs one turn of the lease; on becoming leader it rebuilds the
// view.
func (c *Controller) stepLease(ctx context.Context) {
	was := c.leading.Load()
	sctx, cancel := context.WithTimeout(ctx, c.cfg.LeaseTTL/3)
	rev, err := c.lease.Step(sctx)
	cancel()
	if errors.Is(err, cluster.ErrLeaseLost) {
		c.m.leaseLost.Inc()
		c.log.Warn("controller: lost the lease", "err", err)
	} else if err != nil && ctx.Err() == nil {
		c.m.kvErrors.WithLabelValues("lease").Inc()
		c.log.Debug("controller: lease step", "err", err)
	}
	rev = c.lease.Held()
	c.m.revision.Set(float64(rev))
	switch {
	case rev != 0 && was == 0:
		c.leading.Store(rev)
		c.m.leader.Set(1)
		c.m.changes.Inc()
		c.log.Info("controller: leading", "id", c.cfg.ID, "lease", rev)
		c.takeOver(ctx)
	case rev != 0:
		c.leading.Store(rev)
	case was != 0:
		c.stopLeading()
	}
}

func (c *Controller) stopLeading() {
	if c.leading.Swap(0) != 0 {
		c.m.leader.Set(0)
		c.m.revision.Set(0)
		c.log.Info("controller: no longer leading", "id", c.cfg.ID)
	}
}

// acting reports whether this controller may write now: it holds a lease
// renewed within its TTL. A leader whose renewals fail stops here, before
// any other controller can take the lease.
func (c *Controller) acting() bool {
	if c.lease.Held() == 0 {
		c.stopLeading()
		return false
	}
	return true
}

// takeOver rebuilds the view from the buckets: the registry's nodes (those
// this controller has not heard get NodeDeadAfter from now to announce
// themselves) and the room directory.
func (c *Controller) takeOver(ctx context.Context) {
	now := time.Now()
	rctx, cancel := context.WithTimeout(ctx, c.cfg.LeaseTTL)
	defer cancel()
	nodes, err := c.store.Nodes(rctx)
	if err != nil {
		c.m.kvErrors.WithLabelValues("read").Inc()
		c.log.Warn("controller: reading the registry", "err", err)
	}
	for _, e := range nodes {
		v := c.nodes[e.Value.Node]
		if v == nil {
			v = &nodeView{rec: e.Value, seen: now}
			c.nodes[e.Value.Node] = v
		}
		if !v.announced {
			v.rec.Dead = e.Value.Dead
		}
	}
	rooms, err := c.store.Rooms(rctx)
	if err != nil {
		c.m.kvErrors.WithLabelValues("read").Inc()
		c.log.Warn("controller: reading the room directory", "err", err)
	}
	c.rooms = map[string]*roomView{}
	c.dirty = map[string]bool{}
	for _, e := range rooms {
		c.rooms[e.Value.Room] = &roomView{rec: e.Value, rev: e.Revision}
	}
	c.m.rooms.Set(float64(len(c.rooms)))
	if c.casc != nil {
		c.casc.epochKnown = false // read it again before commanding
	}
	c.log.Info("controller: view rebuilt", "nodes", len(nodes), "rooms", len(rooms))
}

// announced records a node's announcement; the leader writes the registry.
func (c *Controller) announced(ctx context.Context, a bus.NodeAnnounce, at time.Time) {
	v := c.nodes[a.Node]
	if v == nil {
		v = &nodeView{}
		c.nodes[a.Node] = v
	}
	wasDraining, wasDead := v.rec.Draining, v.rec.Dead
	v.rec = cluster.NodeRecord{Node: a.Node, Region: a.Region, UDP: a.UDP, TCP: a.TCP, Load: a.Load,
		Draining: a.Draining, LastSeen: at.UTC(), Relay: a.Relay, RelayID: a.RelayID}
	v.seen, v.announced = at, true
	c.m.nodes.Set(float64(c.liveNodes()))
	if !c.acting() {
		return
	}
	changed := wasDraining != a.Draining || wasDead
	if changed || at.Sub(v.written) >= registryRefresh {
		c.writeNode(ctx, v)
	}
	if a.Draining && !wasDraining {
		c.nodeDown(ctx, a.Node, bus.NodeDownDraining)
	}
}

func (c *Controller) liveNodes() int {
	n := 0
	for _, v := range c.nodes {
		if !v.rec.Dead {
			n++
		}
	}
	return n
}

func (c *Controller) writeNode(ctx context.Context, v *nodeView) {
	wctx, cancel := context.WithTimeout(ctx, c.cfg.LeaseTTL/2)
	defer cancel()
	if err := c.store.PutNode(wctx, v.rec); err != nil {
		c.m.kvErrors.WithLabelValues("node").Inc()
		c.log.Debug("controller: registry write", "node", v.rec.Node, "err", err)
		return
	}
	v.written = time.Now()
}

// checkNodes declares dead the nodes silent for NodeDeadAfter (leader
// only).
func (c *Controller) checkNodes(ctx context.Context, now time.Time) {
	if c.leading.Load() == 0 || !c.acting() {
		return
	}
	if len(c.dirty) > 0 {
		c.retryDirty(ctx)
	}
	for id, v := range c.nodes {
		if v.rec.Dead || now.Sub(v.seen) < c.cfg.NodeDeadAfter {
			continue
		}
		v.rec.Dead = true
		c.m.dead.Inc()
		c.m.nodes.Set(float64(c.liveNodes()))
		c.log.Warn("controller: node dead", "node", id, "silent", now.Sub(v.seen).Round(time.Millisecond))
		c.nodeDown(ctx, id, bus.NodeDownDead)
		c.writeNode(ctx, v)
	}
}

// nodeDown publishes NodeDown and marks the node's rooms for re-placement.
func (c *Controller) nodeDown(ctx context.Context, node, reason string) {
	rev := c.leading.Load()
	if rev == 0 {
		return
	}
	if err := c.bc.PublishNodeDown(bus.NodeDown{Node: node, Reason: reason, Controller: c.cfg.ID, Lease: rev, Time: time.Now().UTC()}); err != nil {
		c.log.Warn("controller: node down", "node", node, "err", err)
	}
	// A dead node's participants are gone without leaving: forgotten (a
	// room they were the last of is removed, unless it is homed there). A
	// room homed there moves home to its node with the most participants
	// that is up, or, with none, is to be placed again.
	up := func(n string) bool { v := c.nodes[n]; return v != nil && !v.rec.Dead && !v.rec.Draining }
	for _, r := range c.rooms {
		changed := false
		if reason == bus.NodeDownDead && r.rec.Count(node) > 0 {
			r.rec.DropNode(node)
			changed = true
		}
		if r.rec.Rehome(node, up) {
			changed = true
		}
		switch {
		case !changed:
		case r.rec.Participants <= 0 && !r.rec.Replace:
			c.deleteRoom(ctx, r) // its last participants were the dead node's
		default:
			r.rec.Updated = time.Now().UTC()
			c.writeRoom(ctx, r)
		}
	}
}

// roomEvent follows participants joining and leaving: the room is homed
// on the node of its first join and counts its participants per node (a
// room spans nodes with the cascade); it is removed when its last
// participant, on whichever node, left.
func (c *Controller) roomEvent(ctx context.Context, e bus.RoomEvent) {
	r := c.rooms[e.Room]
	switch e.Type {
	case bus.EventParticipantJoined:
		if r == nil {
			r = &roomView{rec: cluster.RoomRecord{Room: e.Room, Node: e.Node}}
			c.rooms[e.Room] = r
		}
		if r.rec.Replace {
			// a re-placed room's first join: its new home
			r.rec.Node, r.rec.Replace = e.Node, false
		}
		r.rec.Join(e.Node)
	case bus.EventParticipantLeft:
		if r == nil || !r.rec.Leave(e.Node) {
			return // a leaver the record does not count (its node was declared dead)
		}
	}
	r.rec.Updated = time.Now().UTC()
	c.m.rooms.Set(float64(len(c.rooms)))
	if !c.acting() {
		if r.rec.Participants <= 0 {
			delete(c.rooms, e.Room)
		}
		return
	}
	if r.rec.Participants <= 0 {
		c.deleteRoom(ctx, r)
		return
	}
	c.writeRoom(ctx, r)
}

// deleteRoom removes r from the view and the directory (leader only).
func (c *Controller) deleteRoom(ctx context.Context, r *roomView) {
	delete(c.rooms, r.rec.Room)
	c.m.rooms.Set(float64(len(c.rooms)))
	wctx, cancel := context.WithTimeout(ctx, c.cfg.LeaseTTL/2)
	defer cancel()
	if err := c.store.DeleteRoom(wctx, r.rec.Room, r.rev); err != nil {
		c.m.kvErrors.WithLabelValues("room").Inc()
		c.dirty[r.rec.Room] = true
	}
}

// writeRoom writes r with compare-and-set on the revision the view holds;
// on a conflict (a record the view missed) it adopts the bucket's revision
// and writes once more: the leader's view is the truth.
func (c *Controller) writeRoom(ctx context.Context, r *roomView) {
	wctx, cancel := context.WithTimeout(ctx, c.cfg.LeaseTTL/2)
	defer cancel()
	rev, err := c.store.PutRoom(wctx, r.rec, r.rev)
	if errors.Is(err, cluster.ErrConflict) {
		cur, gerr := c.store.Room(wctx, r.rec.Room)
		base := cur.Revision
		if errors.Is(gerr, cluster.ErrNotFound) {
			base = 0
		} else if gerr != nil && !errors.Is(gerr, cluster.ErrBadRecord) {
			err = gerr
		}
		if gerr == nil || errors.Is(gerr, cluster.ErrNotFound) || errors.Is(gerr, cluster.ErrBadRecord) {
			rev, err = c.store.PutRoom(wctx, r.rec, base)
		}
	}
	if err != nil {
		c.m.kvErrors.WithLabelValues("room").Inc()
		c.log.Debug("controller: directory write", "room", r.rec.Room, "err", err)
		c.dirty[r.rec.Room] = true
		return
	}
	r.rev = rev
	delete(c.dirty, r.rec.Room)
}

// retryDirty writes again the rooms whose write failed (leader only).
func (c *Controller) retryDirty(ctx context.Context) {
	for room := range c.dirty {
		if r := c.rooms[room]; r != nil {
			c.writeRoom(ctx, r)
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, c.cfg.LeaseTTL/2)
		err := c.store.DeleteRoom(wctx, room, 0)
		cancel()
		if err == nil {
			delete(c.dirty, room)
		}
	}
}

// Close ends the subscriptions and the bus connection. It is idempotent.
func (c *Controller) Close() error {
	c.closeOnce.Do(func() {
		for _, s := range c.subs {
			s.Unsubscribe()
		}
		_ = c.bc.Close()
	})
	return nil
}
