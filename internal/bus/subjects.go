package bus

// Subjects between signal and SFU nodes. Nothing outside this file writes a
// subject string; see docs/bus.md.
const (
	// SubjectNodeAnnounce carries NodeAnnounce, published by every SFU
	// node every AnnounceInterval.
	SubjectNodeAnnounce = "traverse.sfu.announce"
	// SubjectSessionAnnounce carries SessionAnnounce: a session's ICE ufrag
	// and the node that holds it, for every node behind a load balancer.
	SubjectSessionAnnounce = "traverse.session.announce"

	subjectNodeRPCPrefix    = "traverse.sfu."
	subjectNodeRPCSuffix    = ".rpc"
	subjectSessionPrefix    = "traverse.signal.session."
	subjectRoomEventsPrefix = "traverse.room."
	subjectRoomEventsSuffix = ".events"
)

// NodeRPCSubject is where node takes Request messages (NATS request/reply).
func NodeRPCSubject(node string) string {
	return subjectNodeRPCPrefix + node + subjectNodeRPCSuffix
}

// SessionSubject is where a node sends SessionMessage for one session
// (offers, its ICE candidates, errors); the signal server holding the
// client's WebSocket subscribes to it.
func SessionSubject(session string) string { return subjectSessionPrefix + session }

// RoomEventsSubject is where a node publishes RoomEvent for room. Use "*"
// to subscribe to every room.
func RoomEventsSubject(room string) string {
	return subjectRoomEventsPrefix + room + subjectRoomEventsSuffix
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
