package bus

import (
	"fmt"
	"net/netip"
	"time"
)

// The cascade's control messages (docs/cascade.md): the leading controller
// pushes each SFU node its whole cascade state (peers, routes, the local
// tracks other nodes need, the remote tracks its rooms hold) on
// traverse.cascade.<node>.cmd; each node publishes its links' measurements
// on traverse.cascade.<node>.report. Only the controller role may publish
// commands, a node reads only its own, and publishes only its own reports
// (Permissions). The prefix traverse.relay. is the P2P relay nodes'
// (relay.go).

const (
	subjectCascadePrefix = "traverse.cascade."
	subjectCascadeCmd    = ".cmd"
	subjectCascadeReport = ".report"
)

// CascadeCommandSubject carries CascadeCommand for node.
func CascadeCommandSubject(node string) string {
	return subjectCascadePrefix + node + subjectCascadeCmd
}

// CascadeReportSubject carries node's CascadeReport ("*": every node's).
func CascadeReportSubject(node string) string {
	return subjectCascadePrefix + node + subjectCascadeReport
}

// Bounds of a cascade command: past them the message is refused as
// malformed. A command carries a node's whole state, so these bound the
// cluster the cascade serves: 256 relay nodes, 1,024 needed local tracks
// and 1,024 remote tracks per node.
const (
	MaxCascadePeers  = 256
	MaxCascadeNeeds  = 1024
	MaxCascadeTracks = 1024
)

// CascadeCommand is a node's whole cascade state, from the leading
// controller. A node applies it as a replacement of the previous one.
type CascadeCommand struct {
	Node string `json:"node"`
	// Controller and Lease name the leader that sent it (its lease
	// revision): a node ignores commands of an older lease than the
	// newest it applied.
	Controller string `json:"controller"`
	Lease      uint64 `json:"lease"`
	// Gen is the controller's route generation (written into relay headers).
	Gen uint32 `json:"gen"`
	// Epoch is the relay links' key epoch: a node seals under it from
	// now on (and always opens the epoch after it). KeepPrev says that
	// the overlap after a rotation is not over: frames of the previous
	// epoch are still opened; without it the node retires that epoch's
	// keys, and its frames are dropped (docs/relay-protocol.md).
	Epoch    uint16 `json:"epoch,omitempty"`
	KeepPrev bool   `json:"keep_prev,omitempty"`
	// Peers are the other relay nodes (relay id -> relay address).
	Peers []CascadePeer `json:"peers,omitempty"`
	// Routes is destination relay id -> next hop relay id.
	Routes []CascadeHop `json:"routes,omitempty"`
	// Needs are the tracks this node sends to other nodes: its local
	// tracks other nodes need, and the remote tracks it holds for others
	// (Relay), each with the nodes it sends to.
	Needs []CascadeNeed `json:"needs,omitempty"`
	// Tracks are the remote tracks of rooms this node holds.
	Tracks []CascadeTrack `json:"tracks,omitempty"`
	Time   time.Time      `json:"time"`
}

// CascadePeer is one relay node.
type CascadePeer struct {
	ID   uint32 `json:"id"`
	Addr string `json:"addr"`
}

// CascadeHop is one route: to Dst, send to Via.
type CascadeHop struct {
	Dst uint32 `json:"dst"`
	Via uint32 `json:"via"`
}

// CascadeNeed commands the node to push a track to Nodes: a local track
// (its publisher is on the node), or with Relay a remote track the node
// holds in the track's distribution tree: each packet of it that reaches
// the node is sent on to Nodes.
type CascadeNeed struct {
	Room      string   `json:"room"`
	Publisher string   `json:"publisher"`
	Track     string   `json:"track"`
	Nodes     []uint32 `json:"nodes"`
	Relay     bool     `json:"relay,omitempty"`
}

// CascadeTrack is a track published on another node (relay id Node) in
// one of this node's rooms.
type CascadeTrack struct {
	Room      string    `json:"room"`
	Publisher string    `json:"publisher"`
	Node      uint32    `json:"node"`
	Track     TrackInfo `json:"track"`
}

func validTrackName(s string) bool { return s != "" && len(s) <= 256 }

// Validate checks a cascade command.
func (c *CascadeCommand) Validate() error {
	if !ValidName(c.Node) || !ValidName(c.Controller) {
		return fmt.Errorf("%w: cascade command: %w", ErrBadMessage, ErrBadSubjectToken)
	}
	if c.Lease == 0 {
		return fmt.Errorf("%w: cascade command without a lease revision", ErrBadMessage)
	}
	if len(c.Peers) > MaxCascadePeers || len(c.Routes) > MaxCascadePeers || len(c.Needs) > MaxCascadeNeeds || len(c.Tracks) > MaxCascadeTracks {
		return fmt.Errorf("%w: cascade command for %s: too many entries", ErrBadMessage, c.Node)
	}
	for _, p := range c.Peers {
		if err := ValidRelay(p.Addr, p.ID); err != nil || p.ID == 0 {
			return fmt.Errorf("%w: cascade peer %d %q", ErrBadMessage, p.ID, p.Addr)
		}
	}
	for _, h := range c.Routes {
		if h.Dst == 0 || h.Via == 0 {
			return fmt.Errorf("%w: cascade route %d via %d", ErrBadMessage, h.Dst, h.Via)
		}
	}
	for _, n := range c.Needs {
		if !ValidName(n.Room) || !ValidName(n.Publisher) || !validTrackName(n.Track) || len(n.Nodes) > MaxCascadePeers {
			return fmt.Errorf("%w: cascade need %q/%q/%q", ErrBadMessage, n.Room, n.Publisher, n.Track)
		}
		for _, id := range n.Nodes {
			if id == 0 {
				return fmt.Errorf("%w: cascade need of node 0", ErrBadMessage)
			}
		}
	}
	for _, t := range c.Tracks {
		if !ValidName(t.Room) || !ValidName(t.Publisher) || t.Node == 0 || !validTrackName(t.Track.ID) ||
			len(t.Track.StreamID) > 256 || len(t.Track.Codec) > 64 || len(t.Track.Fmtp) > 512 || len(t.Track.Layers) > 3 ||
			t.Track.Simulcast < 0 || t.Track.Simulcast > 3 || (t.Track.Kind != "audio" && t.Track.Kind != "video") {
			return fmt.Errorf("%w: cascade track %q/%q/%q", ErrBadMessage, t.Room, t.Publisher, t.Track.ID)
		}
	}
	return nil
}

// CascadeReport is a node's measurements of its relay links.
type CascadeReport struct {
	Node  string        `json:"node"`
	ID    uint32        `json:"id"`
	Links []CascadeLink `json:"links,omitempty"`
	Time  time.Time     `json:"time"`
}

// CascadeLink is one link's figures, as the node's prober measures them.
type CascadeLink struct {
	Peer     uint32  `json:"peer"`
	RTTUs    int64   `json:"rtt_us"`
	JitterUs int64   `json:"jitter_us"`
	Loss     float64 `json:"loss"`
	Up       bool    `json:"up"`
}

// Validate checks a cascade report.
func (r *CascadeReport) Validate() error {
	if !ValidName(r.Node) || r.ID == 0 {
		return fmt.Errorf("%w: cascade report: node %q id %d", ErrBadMessage, r.Node, r.ID)
	}
	if len(r.Links) > MaxCascadePeers {
		return fmt.Errorf("%w: cascade report of %s: %d links", ErrBadMessage, r.Node, len(r.Links))
	}
	for _, l := range r.Links {
		if l.Peer == 0 || l.RTTUs < 0 || l.JitterUs < 0 || l.RTTUs > int64(time.Minute/time.Microsecond) ||
			l.JitterUs > int64(time.Minute/time.Microsecond) || !(l.Loss >= 0 && l.Loss <= 1) {
			return fmt.Errorf("%w: cascade report of %s: link to %d out of range", ErrBadMessage, r.Node, l.Peer)
		}
	}
	return nil
}

// PeerAddr returns a peer's relay address (validated already).
func (p CascadePeer) PeerAddr() netip.AddrPort {
	a, _ := netip.ParseAddrPort(p.Addr)
	return a
}

// PublishCascadeCommand publishes c on CascadeCommandSubject(c.Node)
// (the controller role only).
func (c *Client) PublishCascadeCommand(cmd CascadeCommand) error {
	return c.publish(CascadeCommandSubject(cmd.Node), &cmd)
}

// SubscribeCascadeCommands calls fn for each valid command for node.
func (c *Client) SubscribeCascadeCommands(node string, fn func(CascadeCommand)) (*Subscription, error) {
	if !ValidName(node) {
		return nil, fmt.Errorf("%w: node %q", ErrBadSubjectToken, node)
	}
	return subscribe[CascadeCommand](c, CascadeCommandSubject(node),
		ownSubject("cascade command", func(m *CascadeCommand) string { return CascadeCommandSubject(m.Node) }), fn)
}

// PublishCascadeReport publishes r on CascadeReportSubject(r.Node).
func (c *Client) PublishCascadeReport(r CascadeReport) error {
	return c.publish(CascadeReportSubject(r.Node), &r)
}

// SubscribeCascadeReports calls fn for each valid report of any node.
func (c *Client) SubscribeCascadeReports(fn func(CascadeReport)) (*Subscription, error) {
	return subscribe[CascadeReport](c, CascadeReportSubject("*"),
		ownSubject("cascade report", func(r *CascadeReport) string { return CascadeReportSubject(r.Node) }), fn)
}
