package cluster

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// Limits of record fields: anything beyond is a bad record.
const (
	maxCount  = 1 << 24 // participants, peers, rooms
	maxRegion = 64
)

// NodeRecord is one SFU node in the registry (bus.BucketNodes, key: node
// id), written by the leading controller from the node's announcements.
type NodeRecord struct {
	Node   string `json:"node"`
	Region string `json:"region,omitempty"`
	// UDP and TCP are the node's public media addresses, as announced.
	UDP string `json:"udp"`
	TCP string `json:"tcp,omitempty"`
	// Capacity is the peers the node takes at most (0: not said).
	Capacity int          `json:"capacity,omitempty"`
	Load     bus.NodeLoad `json:"load"`
	Draining bool         `json:"draining,omitempty"`
	// Dead is set when the controller declared the node dead (silent past
	// its expiry); a later announcement clears it.
	Dead     bool      `json:"dead,omitempty"`
	LastSeen time.Time `json:"last_seen"`
	// Relay and RelayID are the node's cascade relay address and relay
	// node id, as announced (both empty without a cascade).
	Relay   string `json:"relay,omitempty"`
	RelayID uint32 `json:"relay_id,omitempty"`
}

// Validate checks a node record.
func (r *NodeRecord) Validate() error {
	if !bus.ValidName(r.Node) {
		return fmt.Errorf("%w: node %q: %w", ErrBadRecord, r.Node, bus.ErrBadSubjectToken)
	}
	if len(r.Region) > maxRegion {
		return fmt.Errorf("%w: node %s: region longer than %d", ErrBadRecord, r.Node, maxRegion)
	}
	if _, err := netip.ParseAddrPort(r.UDP); err != nil {
		return fmt.Errorf("%w: node %s: udp %q: %w", ErrBadRecord, r.Node, r.UDP, err)
	}
	if r.TCP != "" {
		if _, err := netip.ParseAddrPort(r.TCP); err != nil {
			return fmt.Errorf("%w: node %s: tcp %q: %w", ErrBadRecord, r.Node, r.TCP, err)
		}
	}
	if r.Capacity < 0 || r.Capacity > maxCount || r.Load.Peers < 0 || r.Load.Peers > maxCount ||
		r.Load.Rooms < 0 || r.Load.Rooms > maxCount || r.Load.PacketsPerSecond < 0 {
		return fmt.Errorf("%w: node %s: count out of range", ErrBadRecord, r.Node)
	}
	if r.LastSeen.IsZero() {
		return fmt.Errorf("%w: node %s: no last_seen", ErrBadRecord, r.Node)
	}
	if err := bus.ValidRelay(r.Relay, r.RelayID); err != nil {
		return fmt.Errorf("%w: node %s: %w", ErrBadRecord, r.Node, err)
	}
	return nil
}

// RoomRecord is one room in the directory (bus.BucketRooms, key: room
// name): the room's home node and the nodes that hold its participants.
// The leading controller writes it from the nodes' room events (so SFU
// credentials need no JetStream rights); signal servers read it to send
// newcomers to the room's node.
type RoomRecord struct {
	Room string `json:"room"`
	// Node is the room's home: the node it was placed on (its first join,
	// or the first join after a re-placement). With the cascade a room
	// spans nodes (Nodes); Node stays while the room lives, unless it is
	// declared dead or draining, when the room moves home to another of
	// its nodes, or, with none, is to be placed again (Replace).
	Node string `json:"node"`
	// Participants is the room's count in all (joined minus left, over
	// every node): the sum of Nodes.
	Participants int `json:"participants"`
	// Nodes are the nodes holding participants of the room, with their
	// counts, sorted by node. A record written before rooms spanned nodes
	// has none; it decodes as Node holding Participants.
	Nodes []RoomNodeCount `json:"nodes,omitempty"`
	// Replace is set when Node was declared dead or draining: the room
	// must be placed again, and the next join places it anew.
	Replace bool      `json:"replace,omitempty"`
	Updated time.Time `json:"updated"`
}

// RoomNodeCount is one node's share of a room.
type RoomNodeCount struct {
	Node         string `json:"node"`
	Participants int    `json:"participants"`
}

// maxRoomNodes bounds the nodes one room record lists.
const maxRoomNodes = 1024

// Validate checks a room record.
func (r *RoomRecord) Validate() error {
	if !bus.ValidName(r.Room) || !bus.ValidName(r.Node) {
		return fmt.Errorf("%w: room %q on node %q: %w", ErrBadRecord, r.Room, r.Node, bus.ErrBadSubjectToken)
	}
	if r.Participants < 0 || r.Participants > maxCount {
		return fmt.Errorf("%w: room %s: participants %d", ErrBadRecord, r.Room, r.Participants)
	}
	if len(r.Nodes) > maxRoomNodes {
		return fmt.Errorf("%w: room %s: %d nodes, at most %d", ErrBadRecord, r.Room, len(r.Nodes), maxRoomNodes)
	}
	sum := 0
	for i, n := range r.Nodes {
		if !bus.ValidName(n.Node) {
			return fmt.Errorf("%w: room %s: node %q: %w", ErrBadRecord, r.Room, n.Node, bus.ErrBadSubjectToken)
		}
		if i > 0 && r.Nodes[i-1].Node >= n.Node {
			return fmt.Errorf("%w: room %s: nodes not sorted or repeated at %q", ErrBadRecord, r.Room, n.Node)
		}
		if n.Participants <= 0 || n.Participants > maxCount {
			return fmt.Errorf("%w: room %s: node %s: participants %d", ErrBadRecord, r.Room, n.Node, n.Participants)
		}
		sum += n.Participants
	}
	if len(r.Nodes) > 0 && sum != r.Participants {
		return fmt.Errorf("%w: room %s: participants %d, its nodes hold %d", ErrBadRecord, r.Room, r.Participants, sum)
	}
	return nil
}

// normalize gives a record without Nodes (written before rooms spanned
// nodes) its one node: Node with all the participants.
func (r *RoomRecord) normalize() {
	if len(r.Nodes) == 0 && r.Participants > 0 {
		r.Nodes = []RoomNodeCount{{Node: r.Node, Participants: r.Participants}}
	}
}

// Count returns the participants the record has on node.
func (r *RoomRecord) Count(node string) int {
	if i, ok := r.find(node); ok {
		return r.Nodes[i].Participants
	}
	return 0
}

func (r *RoomRecord) find(node string) (int, bool) {
	return slices.BinarySearchFunc(r.Nodes, node, func(n RoomNodeCount, id string) int { return strings.Compare(n.Node, id) })
}

// Join counts a participant joining on node.
func (r *RoomRecord) Join(node string) {
	r.normalize()
	i, ok := r.find(node)
	if !ok {
		r.Nodes = slices.Insert(r.Nodes, i, RoomNodeCount{Node: node})
	}
	r.Nodes[i].Participants++
	r.Participants++
}

// Leave counts a participant leaving node; false when the record holds
// none there (a leaver of a node the record no longer counts: dropped by
// DropNode).
func (r *RoomRecord) Leave(node string) bool {
	r.normalize()
	i, ok := r.find(node)
	if !ok {
		return false
	}
	r.Nodes[i].Participants--
	r.Participants--
	if r.Nodes[i].Participants == 0 {
		r.Nodes = slices.Delete(r.Nodes, i, i+1)
	}
	return true
}

// DropNode forgets node's participants (the node was declared dead: their
// leaves will never come).
func (r *RoomRecord) DropNode(node string) {
	r.normalize()
	if i, ok := r.find(node); ok {
		r.Participants -= r.Nodes[i].Participants
		r.Nodes = slices.Delete(r.Nodes, i, i+1)
	}
}

// Rehome moves the room's home off node (declared dead or draining):
// to the other node holding the most of its participants (ties: the
// lowest name) among those ok accepts, or, with none, marks the room for
// re-placement. It reports whether the record changed.
func (r *RoomRecord) Rehome(node string, ok func(string) bool) bool {
	if r.Node != node || r.Replace {
		return false
	}
	best := -1
	for i, n := range r.Nodes {
		if n.Node != node && ok(n.Node) && (best < 0 || n.Participants > r.Nodes[best].Participants) {
			best = i
		}
	}
	if best < 0 {
		r.Replace = true
	} else {
		r.Node = r.Nodes[best].Node
	}
	return true
}

// LeaseRecord is the controllers' leadership lease (bus.BucketLeader, key
// LeaseKey): who holds it. Its expiry is not in it: a contender times the
// lease on its own clock from the moment it saw the revision change, so
// clocks need not agree (Lease).
type LeaseRecord struct {
	Holder string `json:"holder"`
	// TTLMillis is the holder's lease time: a contender takes the lease
	// once its revision has not changed for this long.
	TTLMillis int64     `json:"ttl_ms"`
	Renewed   time.Time `json:"renewed"`
}

// Lease times accepted in a record.
const (
	minLeaseTTL = 100 * time.Millisecond
	maxLeaseTTL = time.Minute
)

// Validate checks a lease record.
func (r *LeaseRecord) Validate() error {
	if !bus.ValidName(r.Holder) {
		return fmt.Errorf("%w: lease holder %q: %w", ErrBadRecord, r.Holder, bus.ErrBadSubjectToken)
	}
	ttl := time.Duration(r.TTLMillis) * time.Millisecond
	if ttl < minLeaseTTL || ttl > maxLeaseTTL {
		return fmt.Errorf("%w: lease ttl %v outside %v-%v", ErrBadRecord, ttl, minLeaseTTL, maxLeaseTTL)
	}
	return nil
}

// CascadeEpochKey is the key of the cascade's key epoch in
// bus.BucketLeader.
const CascadeEpochKey = "cascade-epoch"

// CascadeEpochRecord is the relay links' key epoch (docs/cascade.md), kept
// by the leading controller so that a new leader continues from it: the
// epoch, when it was last stepped (on the writer's clock) and by whom.
type CascadeEpochRecord struct {
	Epoch      uint16    `json:"epoch"`
	Rotated    time.Time `json:"rotated"`
	Controller string    `json:"controller"`
}

// Validate checks a cascade epoch record.
func (r *CascadeEpochRecord) Validate() error {
	if !bus.ValidName(r.Controller) || r.Rotated.IsZero() {
		return fmt.Errorf("%w: cascade epoch by %q at %v", ErrBadRecord, r.Controller, r.Rotated)
	}
	return nil
}

type validator interface{ Validate() error }

// decode unmarshals and validates one record.
func decode[T any, PT interface {
	*T
	validator
}](b []byte) (T, error) {
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("%w: %w", ErrBadRecord, err)
	}
	if err := PT(&v).Validate(); err != nil {
		return v, err
	}
	if n, ok := any(PT(&v)).(interface{ normalize() }); ok {
		n.normalize()
	}
	return v, nil
}

// DecodeNode, DecodeRoom and DecodeLease parse one record of their bucket.
func DecodeNode(b []byte) (NodeRecord, error)   { return decode[NodeRecord](b) }
func DecodeRoom(b []byte) (RoomRecord, error)   { return decode[RoomRecord](b) }
func DecodeLease(b []byte) (LeaseRecord, error) { return decode[LeaseRecord](b) }

// DecodeCascadeEpoch parses the cascade epoch record.
func DecodeCascadeEpoch(b []byte) (CascadeEpochRecord, error) { return decode[CascadeEpochRecord](b) }
