package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cascade/routes"
	"github.com/traverse-rtc/traverse/internal/cluster"
)

// The cascade (docs/cascade.md): with Config.Cascade the controller
// follows where every track is published and which nodes hold each room's
// participants, feeds the nodes' link reports to a routes.Router, and the
// leader pushes each relay node its whole cascade state (peers, routes,
// the tracks it sends to other nodes, the remote tracks of its rooms) on
// traverse.cascade.<node>.cmd: at once when it changes, and every
// cascadeRefresh anyway (a node that restarted, a lost message).

const (
	cascadeTick    = 500 * time.Millisecond
	cascadeRefresh = 2 * time.Second
	// cascadeKeyOverlap bounds how long frames of the previous key epoch
	// stay accepted after a rotation (at most half the rotation period).
	cascadeKeyOverlap = 30 * time.Second
)

type cascadeView struct {
	router *routes.Router
	gen    uint32
	// tracks: room -> track key (publisher/track) -> where it is.
	tracks map[string]map[string]*pubView
	// members: room -> node -> participants on it.
	members map[string]map[string]int
	// sent: node -> the last command's state sent (JSON without time),
	// and when.
	sent   map[string][]byte
	sentAt map[string]time.Time
	// inRouter are the relay ids the router holds, with the node each
	// belongs to.
	inRouter map[uint32]string
	// trees are this step's distribution trees, by room NUL track key;
	// prevTrees the last step's (the trees' hysteresis).
	trees, prevTrees map[string]routes.Tree
	// tables are every relay node's route table as last computed, to
	// count what each computation changed (routeChanges).
	tables map[routes.NodeID]map[routes.NodeID]routes.NodeID
	left   bool // a node left since the last computation

	// The relay links' key epoch as stored in the leader bucket (its
	// revision), when it was last stepped; epochKnown once the leader read
	// it (it commands nothing before).
	epoch      uint16
	rotated    time.Time
	epochRev   uint64
	epochKnown bool

	commands, badReports, rotations prometheus.Counter
	// routeChanges counts, by destination node, the next hops toward it
	// that any node's table added, moved or removed.
	routeChanges *prometheus.CounterVec
	// directRoutes is, by destination node, how many nodes' tables reach
	// it over their own link to it (next hop = destination).
	directRoutes *prometheus.GaugeVec
}

type pubView struct {
	node, publisher string
	info            bus.TrackInfo
}

func newCascadeView(reg prometheus.Registerer) (*cascadeView, error) {
	v := &cascadeView{router: routes.New(routes.Config{}), tracks: map[string]map[string]*pubView{},
		members: map[string]map[string]int{}, sent: map[string][]byte{}, sentAt: map[string]time.Time{},
		inRouter: map[uint32]string{}, trees: map[string]routes.Tree{}, tables: map[routes.NodeID]map[routes.NodeID]routes.NodeID{},
		commands: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "traverse", Subsystem: "controller",
			Name: "cascade_commands_total", Help: "Cascade commands published to nodes."}),
		badReports: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "traverse", Subsystem: "controller",
			Name: "cascade_bad_reports_total", Help: "Cascade link reports dropped: unknown node, or a relay id not the node's."}),
		rotations: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "traverse", Subsystem: "controller",
			Name: "cascade_key_rotations_total", Help: "Relay key epochs this controller stepped."}),
		routeChanges: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "traverse", Subsystem: "controller",
			Name: "cascade_route_changes_total", Help: "Cascade route changes by destination node: next hops toward it that a node's table added, moved or removed."},
			[]string{"dst"}),
		directRoutes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "traverse", Subsystem: "controller",
			Name: "cascade_direct_routes", Help: "Cascade nodes whose route to the destination node is their own link to it (next hop = destination)."},
			[]string{"dst"}),
	}
	for _, m := range []prometheus.Collector{v.commands, v.badReports, v.rotations, v.routeChanges, v.directRoutes} {
		if err := reg.Register(m); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// cascadeEvent follows the room events the cascade needs (every
// controller, so a new leader's view is warm).
func (c *Controller) cascadeEvent(e bus.RoomEvent) {
	v := c.casc
	if v == nil {
		return
	}
	switch e.Type {
	case bus.EventParticipantJoined, bus.EventParticipantLeft:
		m := v.members[e.Room]
		if m == nil {
			m = map[string]int{}
			v.members[e.Room] = m
		}
		if e.Type == bus.EventParticipantJoined {
			m[e.Node]++
		} else if m[e.Node]--; m[e.Node] <= 0 {
			delete(m, e.Node)
			if len(m) == 0 {
				delete(v.members, e.Room)
			}
		}
	case bus.EventTrackPublished, bus.EventTrackUnpublished:
		if e.Track == nil {
			return
		}
		key := e.Session + "/" + e.Track.ID
		m := v.tracks[e.Room]
		if e.Type == bus.EventTrackPublished {
			if m == nil {
				m = map[string]*pubView{}
				v.tracks[e.Room] = m
			}
			m[key] = &pubView{node: e.Node, publisher: e.Session, info: *e.Track}
			return
		}
		delete(m, key)
		if len(m) == 0 {
			delete(v.tracks, e.Room)
		}
	}
}

// cascadeReport feeds a node's link report to the router.
func (c *Controller) cascadeReport(r bus.CascadeReport) {
	v := c.casc
	if v == nil {
		return
	}
	if n := c.nodes[r.Node]; n == nil || n.rec.RelayID != r.ID {
		v.badReports.Inc()
		return
	}
	if v.inRouter[r.ID] != r.Node {
		return // not in the cascade yet, or its relay id is another node's
	}
	for _, l := range r.Links {
		v.router.Report(routes.NodeID(r.ID), routes.NodeID(l.Peer), routes.Metrics{RTT: time.Duration(l.RTTUs) * time.Microsecond,
			Jitter: time.Duration(l.JitterUs) * time.Microsecond, Loss: l.Loss, Up: l.Up})
	}
}

// cascadeNodes are the live relay nodes by name; a relay id a second
// node claims is left to the first (by name order).
func (c *Controller) cascadeNodes() map[string]*nodeView {
	out := map[string]*nodeView{}
	ids := map[uint32]string{}
	names := make([]string, 0, len(c.nodes))
	for name := range c.nodes {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		n := c.nodes[name]
		if n.rec.Dead || n.rec.RelayID == 0 {
			continue
		}
		if other, ok := ids[n.rec.RelayID]; ok {
			c.log.Warn("controller: two nodes claim one relay id; the second is left out of the cascade",
				"relay_id", n.rec.RelayID, "node", name, "first", other)
			continue
		}
		ids[n.rec.RelayID] = name
		out[name] = n
	}
	return out
}

// cascadeStep recomputes routes and pushes every relay node its state
// (the leader, every cascadeTick).
func (c *Controller) cascadeStep(ctx context.Context, now time.Time) {
	v := c.casc
	if v == nil {
		return
	}
	nodes := c.cascadeNodes()
	live := map[uint32]bool{}
	joined := false
	for name, n := range nodes {
		id := n.rec.RelayID
		live[id] = true
		if owner, ok := v.inRouter[id]; ok && owner != name {
			// Another node has the id now: its links are not the old one's.
			v.removeNode(id)
		}
		if _, ok := v.inRouter[id]; !ok {
			v.router.AddNode(routes.NodeID(id))
			v.inRouter[id] = name
			joined = true
		}
	}
	for id := range v.inRouter {
		if !live[id] {
			v.removeNode(id)
		}
	}
	v.computeRoutes(now, joined)
	v.prevTrees, v.trees = v.trees, map[string]routes.Tree{}
	rev := c.leading.Load()
	if rev == 0 || !c.acting() || !c.cascadeEpoch(ctx, now) {
		return
	}
	overlap := min(cascadeKeyOverlap, c.cfg.CascadeKeyRotation/2)
	for name, n := range nodes {
		cmd := c.cascadeCommand(name, n, nodes)
		cmd.Controller, cmd.Lease = c.cfg.ID, rev
		cmd.Epoch, cmd.KeepPrev = v.epoch, now.Sub(v.rotated) < overlap
		state, err := json.Marshal(cmd)
		if err != nil {
			continue
		}
		if bytes.Equal(state, v.sent[name]) && now.Sub(v.sentAt[name]) < cascadeRefresh {
			continue
		}
		cmd.Time = now.UTC()
		if err := c.bc.PublishCascadeCommand(cmd); err != nil {
			c.log.Warn("controller: cascade command", "node", name, "err", err)
			continue
		}
		v.commands.Inc()
		v.sent[name], v.sentAt[name] = state, now
	}
	for name := range v.sent {
		if nodes[name] == nil {
			delete(v.sent, name)
			delete(v.sentAt, name)
		}
	}
}

// computeRoutes recomputes the tables (the generation moves when a
// route changed) and counts the changes; nodesChanged: a node joined or
// left since the last computation (removeNode takes away its routes
// without Compute counting them).
func (v *cascadeView) computeRoutes(now time.Time, nodesChanged bool) {
	changed := v.router.Compute(now) > 0
	if changed {
		v.gen++
	}
	if changed || nodesChanged || v.left {
		v.countRouteChanges()
		v.left = false
	}
}

// removeNode takes relay id out of the router, with its route-change
// series and last table.
func (v *cascadeView) removeNode(id uint32) {
	v.router.RemoveNode(routes.NodeID(id))
	v.routeChanges.DeleteLabelValues(v.inRouter[id])
	v.directRoutes.DeleteLabelValues(v.inRouter[id])
	delete(v.tables, routes.NodeID(id))
	delete(v.inRouter, id)
	v.left = true
}

// countRouteChanges compares every relay node's table with the last
// computation's (v.tables) and counts each next hop added, moved or
// removed by its destination (routeChanges), and sets how many nodes
// reach each destination over their own link to it (directRoutes);
// routes toward or at nodes that left the cascade are not counted.
func (v *cascadeView) countRouteChanges() {
	count := func(dst routes.NodeID) {
		if name, ok := v.inRouter[uint32(dst)]; ok {
			v.routeChanges.WithLabelValues(name).Inc()
		}
	}
	tables := make(map[routes.NodeID]map[routes.NodeID]routes.NodeID, len(v.inRouter))
	direct := make(map[routes.NodeID]int, len(v.inRouter))
	for id := range v.inRouter {
		n := routes.NodeID(id)
		tab, old := v.router.Table(n), v.tables[n]
		for dst, via := range tab {
			if prev, ok := old[dst]; !ok || prev != via {
				count(dst)
			}
			if via == dst {
				direct[dst]++
			}
		}
		for dst := range old {
			if _, ok := tab[dst]; !ok {
				count(dst)
			}
		}
		tables[n] = tab
	}
	v.tables = tables
	for id, name := range v.inRouter {
		v.directRoutes.WithLabelValues(name).Set(float64(direct[routes.NodeID(id)]))
	}
}

// tree is the distribution tree of a track (routes.Tree): from its
// publisher's node to every other relay node with participants in its
// room, each joined to the nearest node the track already reaches.
// Computed once per step for all nodes' commands (v.trees).
func (v *cascadeView) tree(room, key string, t *pubView, nodes map[string]*nodeView) routes.Tree {
	tk := room + "\x00" + key
	if tr, ok := v.trees[tk]; ok {
		return tr
	}
	var need []routes.NodeID
	for other := range v.members[room] {
		if o := nodes[other]; o != nil && other != t.node {
			need = append(need, routes.NodeID(o.rec.RelayID))
		}
	}
	tr := v.router.Tree(routes.NodeID(nodes[t.node].rec.RelayID), need, v.prevTrees[tk])
	v.trees[tk] = tr
	return tr
}

// cascadeEpoch keeps the relay key epoch (the leader, each step): read
// from the leader bucket once leading (made at 0 when absent), stepped
// by one and written back (compare-and-set) when CascadeKeyRotation has
// passed since the last step. It reports whether the epoch is known; a
// failed write keeps the current epoch and is tried again next step.
func (c *Controller) cascadeEpoch(ctx context.Context, now time.Time) bool {
	v := c.casc
	kctx, cancel := context.WithTimeout(ctx, c.cfg.LeaseTTL/3)
	defer cancel()
	if !v.epochKnown {
		e, err := c.store.CascadeEpoch(kctx)
		switch {
		case errors.Is(err, cluster.ErrNotFound):
			rec := cluster.CascadeEpochRecord{Epoch: 0, Rotated: now.UTC(), Controller: c.cfg.ID}
			rev, err := c.store.PutCascadeEpoch(kctx, rec, 0)
			if err != nil {
				c.m.kvErrors.WithLabelValues("epoch").Inc()
				return false
			}
			v.epoch, v.rotated, v.epochRev = 0, now, rev
		case err != nil:
			c.m.kvErrors.WithLabelValues("epoch").Inc()
			c.log.Warn("controller: reading the cascade key epoch", "err", err)
			return false
		default:
			v.epoch, v.rotated, v.epochRev = e.Value.Epoch, e.Value.Rotated, e.Revision
		}
		v.epochKnown = true
	}
	if now.Sub(v.rotated) < c.cfg.CascadeKeyRotation {
		return true
	}
	rec := cluster.CascadeEpochRecord{Epoch: v.epoch + 1, Rotated: now.UTC(), Controller: c.cfg.ID}
	rev, err := c.store.PutCascadeEpoch(kctx, rec, v.epochRev)
	switch {
	case errors.Is(err, cluster.ErrConflict):
		// another controller stepped it: read it again next step
		c.m.kvErrors.WithLabelValues("epoch").Inc()
		v.epochKnown = false
		return false
	case err != nil:
		c.m.kvErrors.WithLabelValues("epoch").Inc()
		c.log.Warn("controller: stepping the cascade key epoch", "err", err)
		return true
	}
	v.epoch, v.rotated, v.epochRev = rec.Epoch, now, rev
	v.rotations.Inc()
	c.log.Info("controller: cascade key epoch stepped", "epoch", v.epoch)
	return true
}

// cascadeCommand is node's whole state (without controller, lease, time).
func (c *Controller) cascadeCommand(name string, n *nodeView, nodes map[string]*nodeView) bus.CascadeCommand {
	v := c.casc
	me := n.rec.RelayID
	cmd := bus.CascadeCommand{Node: name, Gen: v.gen}
	for other, o := range nodes {
		if other == name {
			continue
		}
		if ap, err := netip.ParseAddrPort(o.rec.Relay); err == nil && len(cmd.Peers) < bus.MaxCascadePeers {
			cmd.Peers = append(cmd.Peers, bus.CascadePeer{ID: o.rec.RelayID, Addr: ap.String()})
		}
	}
	slices.SortFunc(cmd.Peers, func(a, b bus.CascadePeer) int { return int(int64(a.ID) - int64(b.ID)) })
	for dst, via := range v.router.Table(routes.NodeID(me)) {
		cmd.Routes = append(cmd.Routes, bus.CascadeHop{Dst: uint32(dst), Via: uint32(via)})
	}
	slices.SortFunc(cmd.Routes, func(a, b bus.CascadeHop) int { return int(int64(a.Dst) - int64(b.Dst)) })
	rooms := make([]string, 0, len(v.tracks))
	for room := range v.tracks {
		rooms = append(rooms, room)
	}
	slices.Sort(rooms)
	for _, room := range rooms {
		keys := make([]string, 0, len(v.tracks[room]))
		for k := range v.tracks[room] {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			t := v.tracks[room][k]
			pub := nodes[t.node]
			if pub == nil {
				continue
			}
			tree := v.tree(room, k, t, nodes)
			if dsts := tree.Forward[routes.NodeID(me)]; len(dsts) > 0 && len(cmd.Needs) < bus.MaxCascadeNeeds {
				need := bus.CascadeNeed{Room: room, Publisher: t.publisher, Track: t.info.ID, Relay: t.node != name}
				for _, d := range dsts {
					need.Nodes = append(need.Nodes, uint32(d))
				}
				cmd.Needs = append(cmd.Needs, need)
			}
			if t.node != name && v.members[room][name] > 0 && len(cmd.Tracks) < bus.MaxCascadeTracks {
				cmd.Tracks = append(cmd.Tracks, bus.CascadeTrack{Room: room, Publisher: t.publisher, Node: pub.rec.RelayID, Track: t.info})
			}
		}
	}
	return cmd
}
