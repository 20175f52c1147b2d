package bus

// Subjects between signal and SFU nodes. Nothing outside this file writes a
// subject string; see docs/bus.md.
//
// Every subject a node publishes on, and the subject of its requests, embed
// the node id (traverse.sfu.<node>.…), so that the server's permissions can
// confine a node's credentials to its own subjects (Permissions): node A
// cannot announce as B, answer for B, or speak in B's sessions. Receivers
// check that the node named in a message is the node of its subject.
const (
	subjectNodePrefix     = "traverse.sfu."
	subjectNodeRPC        = ".rpc"
	subjectNodeAnnounce   = ".announce"
	subjectNodeSession    = ".session."
	subjectNodeRoom       = ".room."
	subjectNodeRoomEvents = ".events"
	subjectNodeUfrag      = ".ufrag"
)

// NodeRPCSubject is where node takes Request messages (NATS request/reply).
func NodeRPCSubject(node string) string {
	return subjectNodePrefix + node + subjectNodeRPC
}

// NodeAnnounceSubject is where node publishes its NodeAnnounce every
// AnnounceInterval. Use "*" to subscribe to every node.
func NodeAnnounceSubject(node string) string {
	return subjectNodePrefix + node + subjectNodeAnnounce
}

// SessionSubject is where node sends SessionMessage for one session
// (offers, its ICE candidates, errors); the signal server holding the
// client's WebSocket subscribes to it.
func SessionSubject(node, session string) string {
	return subjectNodePrefix + node + subjectNodeSession + session
}

// RoomEventsSubject is where node publishes RoomEvent for room. Use "*" for
// node to follow a room on every node, and for room too to follow all.
func RoomEventsSubject(node, room string) string {
	return subjectNodePrefix + node + subjectNodeRoom + room + subjectNodeRoomEvents
}

// SessionAnnounceSubject carries SessionAnnounce: a session's ICE ufrag
// and node, which holds it, for every node behind a load balancer. Use "*"
// to subscribe to every node's sessions.
func SessionAnnounceSubject(node string) string {
	return subjectNodePrefix + node + subjectNodeUfrag
}

// ValidName reports whether s can be a node id, session id or room name:
// one subject token of 1 to 64 characters from A-Z a-z 0-9 _ -. Signal
// refuses room names that are not valid before they reach the bus.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
