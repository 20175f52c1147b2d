package signal

import "context"

// Backend is what signaling needs from the bus: the live SFU nodes and a
// way to open a session on one. The bus adapter (bus.go) implements it over
// NATS; tests use a fake.
type Backend interface {
	// Nodes returns the nodes announced recently enough to be alive.
	Nodes() []Node
	// Join prepares a session for a participant on node: events from the
	// node and the room for this session go to sink (possibly from several
	// goroutines at once; it must not block) until the Link is closed or sink gets a NodeClosed event. The node
	// learns of the session with the first Offer.
	Join(ctx context.Context, node Node, req JoinRequest, sink func(NodeEvent)) (Link, error)
}

// JoinRequest is a participant joining a room on a node.
type JoinRequest struct {
	Room     string
	Identity string
	// Session is the session id signal chose (a valid bus name); other
	// participants see it as the participant id.
	Session   string
	Publish   bool
	Subscribe bool
	// Client is the client's address as signal saw it.
	Client string
}

// Link is one session on a node.
type Link interface {
	// Offer sends the client's offer and returns the node's answer; the
	// first offer creates the session on the node. ufrag is the offer's ICE
	// ufrag, announced to the nodes so that whichever node's socket receives
	// the client's first binding request knows the session.
	Offer(ctx context.Context, sdp, ufrag string) (answer string, err error)
	// Answer sends the client's answer to an offer the node made.
	Answer(ctx context.Context, sdp string) error
	// Candidate trickles one client candidate (empty: end of candidates).
	Candidate(ctx context.Context, c Candidate) error
	// Close leaves the room. It is idempotent.
	Close() error
}

// layerSetter is an optional Link capability: the client's layer requests
// (TypeLayer) reach the node.
type layerSetter interface {
	Layer(ctx context.Context, req LayerRequest) error
}

// LayerRequest caps the simulcast layer of one received track (Track "*":
// all; StreamID narrows to one msid stream): at MaxLayer, or, when Width or
// Height is set, at the layer the node picks for that size.
type LayerRequest struct {
	Track, StreamID         string
	MaxLayer, Width, Height int
}

// snapshotter is an optional Link capability: the room's participants and
// tracks known so far, sent to the client right after joined.
type snapshotter interface {
	Snapshot() []NodeEvent
}

// NodeEventKind says what a NodeEvent carries.
type NodeEventKind int

// Node event kinds.
const (
	// NodeOffer: the node renegotiates (tracks to subscribe to were added
	// or removed); SDP is its offer, the client answers.
	NodeOffer NodeEventKind = iota + 1
	// NodeCandidate: a trickled node candidate.
	NodeCandidate
	// NodeParticipant: a participant joined or left (Event, Participant).
	NodeParticipant
	// NodeTrack: a participant published or unpublished a track (Event,
	// Participant, Track).
	NodeTrack
	// NodeSpeakers: the active speakers changed.
	NodeSpeakers
	// NodeClosed: the node ended the session (Err says why).
	NodeClosed
	// NodeRejoin: the node asks the session to move to another node
	// (Node, Reason: a drain).
	NodeRejoin
	// NodeMoved: a node of a balanced group won the session's claim and
	// serves it from now on (Node): its death, not the placed node's,
	// makes the session rejoin (grouplink.go).
	NodeMoved
)

// nodeWatcher is an optional Backend capability: it calls down when it
// declares a node dead (its announcements stopped), which New wires to
// Server.NodeDown.
type nodeWatcher interface {
	OnNodeDown(down func(node, reason string))
}

// NodeEvent is one event from a node for a session.
type NodeEvent struct {
	Kind        NodeEventKind
	SDP         string
	Candidate   Candidate
	Event       string // EventJoined, EventLeft, EventPublished, EventUnpublished
	Participant Participant
	Track       Track
	Speakers    []Speaker
	Err         error
	// Node and Reason are set for NodeRejoin; Node for NodeMoved.
	Node, Reason string
}
