package cluster

import (
	"encoding/json"
	"fmt"
	"net/netip"
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
// name): the node that holds it. The leading controller writes it from the
// nodes' room events (so SFU credentials need no JetStream rights);
// signal servers read it to send newcomers to the room's node.
type RoomRecord struct {
	Room string `json:"room"`
	Node string `json:"node"`
	// Participants is the count the room events give (joined minus left).
	Participants int `json:"participants"`
	// Replace is set when Node was declared dead or draining: the room
	// must be placed again, and the next join places it anew.
	Replace bool      `json:"replace,omitempty"`
	Updated time.Time `json:"updated"`
}

// Validate checks a room record.
func (r *RoomRecord) Validate() error {
	if !bus.ValidName(r.Room) || !bus.ValidName(r.Node) {
		return fmt.Errorf("%w: room %q on node %q: %w", ErrBadRecord, r.Room, r.Node, bus.ErrBadSubjectToken)
	}
	if r.Participants < 0 || r.Participants > maxCount {
		return fmt.Errorf("%w: room %s: participants %d", ErrBadRecord, r.Room, r.Participants)
	}
	return nil
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
	return v, nil
}

// DecodeNode, DecodeRoom and DecodeLease parse one record of their bucket.
func DecodeNode(b []byte) (NodeRecord, error)   { return decode[NodeRecord](b) }
func DecodeRoom(b []byte) (RoomRecord, error)   { return decode[RoomRecord](b) }
func DecodeLease(b []byte) (LeaseRecord, error) { return decode[LeaseRecord](b) }

// DecodeCascadeEpoch parses the cascade epoch record.
func DecodeCascadeEpoch(b []byte) (CascadeEpochRecord, error) { return decode[CascadeEpochRecord](b) }
