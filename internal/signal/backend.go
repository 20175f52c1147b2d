package signal

import "context"

// Backend is what signaling needs from the bus: the live SFU nodes and a
// way to open a session on one. The bus adapter (bus.go) implements it over
// NATS; tests use a fake.
type Backend interface {
	// Nodes returns the nodes announced recently enough to be alive.
	Nodes() []Node
	// Join opens a session for a participant on node. Events from the node
	// for this session go to sink until the Link is closed or sink gets a
	// NodeClosed event. Join returns the room's participants as the node
	// knows them.
	Join(ctx context.Context, node Node, req JoinRequest, sink func(NodeEvent)) (Link, []Participant, error)
}

// JoinRequest is a participant joining a room on a node.
type JoinRequest struct {
	Room          string
	Identity      string
	ParticipantID string
	Publish       bool
	Subscribe     bool
}

// Link is one session on a node.
type Link interface {
	// Offer sends the client's offer and returns the node's answer. ufrag
	// is the offer's ICE ufrag, announced to the nodes so that whichever
	// node's socket receives the client's first binding request knows it.
	Offer(ctx context.Context, sdp, ufrag string) (answer string, err error)
	// Answer sends the client's answer to an offer the node made.
	Answer(ctx context.Context, sdp string) error
	// Candidate trickles one client candidate (empty: end of candidates).
	Candidate(ctx context.Context, c Candidate) error
	// Close leaves the room. It is idempotent.
	Close() error
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
	// NodeParticipant: a participant joined, changed tracks or left.
	NodeParticipant
	// NodeSpeakers: the active speakers changed.
	NodeSpeakers
	// NodeClosed: the node ended the session (Err says why).
	NodeClosed
)

// NodeEvent is one event from a node for a session.
type NodeEvent struct {
	Kind        NodeEventKind
	SDP         string
	Candidate   Candidate
	Event       string // EventJoined, EventUpdated, EventLeft
	Participant Participant
	Speakers    []string
	Err         error
}
