package bus

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"time"
)

// AnnounceInterval is how often an SFU node publishes NodeAnnounce;
// NodeExpiry is how long a node table keeps a node that went silent, and
// so how soon a killed node is declared dead (docs/failover.md): four
// missed announcements. The cost is one message of ~200 bytes (plus its
// room names) per node every 500 ms to every signal server: 100 nodes and
// 10 signal servers are 2,000 small messages a second on the bus.
const (
	AnnounceInterval = 500 * time.Millisecond
	NodeExpiry       = 2 * time.Second
)

// MaxAnnouncedRooms bounds NodeAnnounce.Rooms: an announcement naming more
// is refused as malformed (the node stops listing its rooms past it).
const MaxAnnouncedRooms = 4096

// NodeAnnounce is an SFU node saying it is alive, where clients reach it
// and how loaded it is. Published on NodeAnnounceSubject(node).
type NodeAnnounce struct {
	Node   string `json:"node"`
	Region string `json:"region,omitempty"`
	// UDP and TCP are the public addresses ("ip:port") of the node's one
	// media UDP port and one ICE-TCP port; TCP is empty when disabled.
	UDP  string    `json:"udp"`
	TCP  string    `json:"tcp,omitempty"`
	Load NodeLoad  `json:"load"`
	Time time.Time `json:"time"`
	// Draining is set when the node takes no new sessions.
	Draining bool `json:"draining,omitempty"`
	// Rooms are the rooms the node serves now (at most
	// MaxAnnouncedRooms), so that every signal server sends a room's
	// newcomers to the node that already holds it, with no state of its
	// own (a restarted signal server learns them within one interval).
	Rooms []string `json:"rooms,omitempty"`
	// Relay is the address ("ip:port") of the node's cascade relay port
	// and RelayID its 32-bit relay node id (docs/cascade.md); both empty
	// when the node runs no cascade, both set when it does.
	Relay   string `json:"relay,omitempty"`
	RelayID uint32 `json:"relay_id,omitempty"`
	// Group names the balanced group the node belongs to: nodes that share
	// one public address behind a UDP load balancer, any of which serves a
	// session whose first STUN binding reaches it (docs/cascade.md,
	// "Behind a UDP load balancer"). Empty: no group.
	Group string `json:"group,omitempty"`
}

// NodeLoad is a node's current load.
type NodeLoad struct {
	Peers            int     `json:"peers"`
	Rooms            int     `json:"rooms"`
	PacketsPerSecond float64 `json:"packets_per_second"`
}

// RequestType names what a Request asks of a node.
type RequestType string

// Request types, signal -> node on NodeRPCSubject.
const (
	// RequestJoin creates the session: Join is set; the reply carries the
	// node's SDP answer to Join.Offer.
	RequestJoin RequestType = "join"
	// RequestOffer is a client-initiated renegotiation (it adds or removes
	// tracks): SDP is the client's offer, the reply carries the answer.
	RequestOffer RequestType = "offer"
	// RequestAnswer answers an offer the node sent with SessionOffer: SDP is
	// the client's answer; the reply is empty.
	RequestAnswer RequestType = "answer"
	// RequestCandidate forwards one trickled client ICE candidate.
	RequestCandidate RequestType = "candidate"
	// RequestLeave ends the session.
	RequestLeave RequestType = "leave"
	// RequestLayer caps the simulcast layer the session receives of one
	// track (Layer is set): how a client says at what size it shows that
	// video.
	RequestLayer RequestType = "layer"
	// RequestDrain makes the node take no new sessions and move its
	// sessions off over Drain.PeriodMillis (docs/failover.md). It names no
	// session. Only connections allowed to publish on the node's request
	// subject send it: signal-role credentials (signal servers, the
	// operator's "traverse sfu drain", a controller), never another node.
	RequestDrain RequestType = "drain"
	// RequestMute stops (or resumes) forwarding one track the session
	// publishes (Mute is set): the operator's mute (signal's room API),
	// which holds whatever the publisher's client does.
	RequestMute RequestType = "mute"
	// RequestStats asks for the session's path and bit rates; the reply
	// carries Stats (signal's room API shows them).
	RequestStats RequestType = "stats"
	// RequestClaimed tells a node of a balanced group that its claim of
	// the session (SessionClaim) won: the node serves it from now on. The
	// other nodes the session was offered to get RequestLeave.
	RequestClaimed RequestType = "claimed"
)

// DrainRequest says how a node drains.
type DrainRequest struct {
	// PeriodMillis spreads the sessions' rejoin messages over this many
	// milliseconds (0: the node's configured period). At most
	// MaxDrainPeriod.
	PeriodMillis int64 `json:"period_ms,omitempty"`
}

// MaxDrainPeriod bounds DrainRequest.PeriodMillis.
const MaxDrainPeriod = time.Hour

// SessionStats is how a session reaches the node and what it moves.
type SessionStats struct {
	// Path is how the client's media reaches the node: "udp", "tcp"
	// (ICE-TCP), or "relay" (through a TURN server); "" before ICE
	// connects.
	Path string `json:"path"`
	// Remote is the client's media address as the node sees it.
	Remote string `json:"remote,omitempty"`
	// BitrateIn is what the session publishes, BitrateOut what the node
	// forwards to it, in bit/s, as last measured.
	BitrateIn  uint64 `json:"bitrate_in"`
	BitrateOut uint64 `json:"bitrate_out"`
}

// MuteRequest mutes or unmutes a track the session publishes.
type MuteRequest struct {
	// Track is the track's id (TrackInfo.ID); "*" is every track of the
	// session.
	Track string `json:"track"`
	Muted bool   `json:"muted"`
}

// LayerRequest caps the simulcast layer of one received track.
type LayerRequest struct {
	// Track is the track's id (TrackInfo.ID, the msid track id the client
	// sees); "*" applies to every track the session receives.
	Track string `json:"track"`
	// StreamID, when set, narrows Track to the track of that msid stream
	// (TrackInfo.StreamID): track ids need not be unique in a room.
	StreamID string `json:"stream_id,omitempty"`
	// MaxLayer is the highest layer wanted: 0 (low), 1 (middle) or 2
	// (high, the default). A client showing the video in a tile under
	// 320 pixels wide asks for 0, under 640 for 1.
	MaxLayer int `json:"max_layer"`
	// Width and Height, when either is set, are the size in device pixels
	// at which the client shows the video, and the node derives the cap
	// from them instead of MaxLayer: the lowest layer whose nominal size
	// (320x180, 640x360, 1280x720) covers both. 0 is "any".
	Width  int `json:"width,omitempty"`
	Height int `json:"height,omitempty"`
}

// MaxVideoSize bounds LayerRequest.Width and Height.
const MaxVideoSize = 16384

// Request is a signal -> node call on NodeRPCSubject(node). The node
// replies with Reply.
type Request struct {
	Type    RequestType `json:"type"`
	Session string      `json:"session"`
	// Join is set for RequestJoin.
	Join *Join `json:"join,omitempty"`
	// SDP is set for RequestOffer and RequestAnswer.
	SDP string `json:"sdp,omitempty"`
	// Candidate is set for RequestCandidate; nil there means end of
	// candidates.
	Candidate *Candidate `json:"candidate,omitempty"`
	// Layer is set for RequestLayer.
	Layer *LayerRequest `json:"layer,omitempty"`
	// Drain is set for RequestDrain.
	Drain *DrainRequest `json:"drain,omitempty"`
	// Mute is set for RequestMute.
	Mute *MuteRequest `json:"mute,omitempty"`
}

// Join asks a node to create a session in a room. Rights come from the
// client's token, checked by signal: the node enforces them.
type Join struct {
	Room      string `json:"room"`
	Identity  string `json:"identity"`
	Name      string `json:"name,omitempty"`
	Publish   bool   `json:"publish"`
	Subscribe bool   `json:"subscribe"`
	// Offer is the client's SDP offer.
	Offer string `json:"offer"`
	// ClientAddr is the client's address as signal saw it ("ip" or
	// "ip:port"), informational.
	ClientAddr string `json:"client_addr,omitempty"`
	// ICE, when set, makes the join a balanced group's: the node answers
	// with these ICE credentials and the group's certificate, holds the
	// session unjoined, and claims it (SessionClaim) when the session's
	// first STUN binding reaches it; only RequestClaimed makes it join the
	// room.
	ICE *ICECredentials `json:"ice,omitempty"`
}

// ICECredentials are the ICE ufrag and password a balanced group's nodes
// all answer a session with (RFC 8839 section 5.4: 4-256 and 22-256
// ice-chars; here at most 64 each).
type ICECredentials struct {
	Ufrag string `json:"ufrag"`
	Pwd   string `json:"pwd"`
}

// Validate checks the credentials' lengths and characters.
func (c *ICECredentials) Validate() error {
	if !iceChars(c.Ufrag, 4, 64) || !iceChars(c.Pwd, 22, 64) {
		return fmt.Errorf("%w: ice credentials: ufrag 4-64 and pwd 22-64 ice-chars", ErrBadMessage)
	}
	return nil
}

// iceChars reports whether s is min to max ice-chars (ALPHA, DIGIT, "+",
// "/").
func iceChars(s string, min, max int) bool {
	if len(s) < min || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '+' || c == '/') {
			return false
		}
	}
	return true
}

// Candidate is one ICE candidate as the browser's RTCIceCandidateInit.
type Candidate struct {
	Candidate        string  `json:"candidate"`
	SDPMid           *string `json:"sdpMid,omitempty"`
	SDPMLineIndex    *uint16 `json:"sdpMLineIndex,omitempty"`
	UsernameFragment *string `json:"usernameFragment,omitempty"`
}

// Reply is a node's answer to a Request: Error is set on failure.
type Reply struct {
	// SDP is the node's answer for RequestJoin and RequestOffer.
	SDP   string `json:"sdp,omitempty"`
	Error *Error `json:"error,omitempty"`
	// Node is the node that answered.
	Node string `json:"node,omitempty"`
	// Stats is the reply to RequestStats.
	Stats *SessionStats `json:"stats,omitempty"`
	// After, when set by a Handler, runs once the reply is sent, so that
	// messages it publishes (a renegotiation offer) follow the reply.
	After func() `json:"-"`
}

// SessionMessageType names a node -> signal session message.
type SessionMessageType string

// Session message types, node -> signal on SessionSubject(node, session).
const (
	// SessionOffer: the node renegotiates (tracks were added or removed
	// for this subscriber); SDP is its offer; the client answers with
	// RequestAnswer.
	SessionOffer SessionMessageType = "offer"
	// SessionCandidate: one node ICE candidate (an ICE-lite node puts all
	// of them in its SDP, so this is rare).
	SessionCandidate SessionMessageType = "candidate"
	// SessionEvent: a RoomEvent addressed to this session only.
	SessionEvent SessionMessageType = "event"
	// SessionError: the session failed; Error says why.
	SessionError SessionMessageType = "error"
	// SessionClosed: the node ended the session (ICE failed, node
	// shutting down); the signal server tells the client.
	SessionClosed SessionMessageType = "closed"
	// SessionRejoin: the node is draining and asks the session to move
	// (Reason RejoinDrain); the signal server tells the client to rejoin
	// and places it on another node.
	SessionRejoin SessionMessageType = "rejoin"
	// SessionClaim: a node of a balanced group received the session's
	// first STUN binding and claims it. The signal server holding the
	// session answers the first claim of a node it offered the session to
	// with RequestClaimed, every other with RequestLeave. Only the node
	// itself may publish on its subject, so no one claims in its name.
	SessionClaim SessionMessageType = "claim"
)

// Rejoin reasons, in SessionMessage.Reason and signal's rejoin message.
const (
	// RejoinDrain: the node is draining.
	RejoinDrain = "drain"
	// RejoinNodeFailed: the node went silent (or a controller declared
	// it dead).
	RejoinNodeFailed = "node_failed"
)

// SessionMessage is a node -> signal message about one session.
type SessionMessage struct {
	Type      SessionMessageType `json:"type"`
	Session   string             `json:"session"`
	SDP       string             `json:"sdp,omitempty"`
	Candidate *Candidate         `json:"candidate,omitempty"`
	Event     *RoomEvent         `json:"event,omitempty"`
	Error     *Error             `json:"error,omitempty"`
	// Reason is set for SessionRejoin (RejoinDrain).
	Reason string `json:"reason,omitempty"`
}

// RoomEventType names a room event.
type RoomEventType string

// Room event types, node -> signal on RoomEventsSubject(node, room).
const (
	EventParticipantJoined RoomEventType = "participant_joined"
	EventParticipantLeft   RoomEventType = "participant_left"
	EventTrackPublished    RoomEventType = "track_published"
	EventTrackUnpublished  RoomEventType = "track_unpublished"
	EventActiveSpeaker     RoomEventType = "active_speaker"
)

// RoomEvent is something that happened in a room, for signal to relay to
// the room's clients.
type RoomEvent struct {
	Type     RoomEventType `json:"type"`
	Room     string        `json:"room"`
	Node     string        `json:"node,omitempty"`
	Session  string        `json:"session,omitempty"`
	Identity string        `json:"identity,omitempty"`
	Name     string        `json:"name,omitempty"`
	// Track is set for track events.
	Track *TrackInfo `json:"track,omitempty"`
	// Speakers is set for EventActiveSpeaker: loudest first.
	Speakers []Speaker `json:"speakers,omitempty"`
	Time     time.Time `json:"time"`
}

// TrackInfo describes a published track. StreamID and ID are the msid the
// subscribers see in their SDP, so a client can map a track to a
// participant.
type TrackInfo struct {
	ID       string   `json:"id"`
	StreamID string   `json:"stream_id"`
	Kind     string   `json:"kind"` // "audio", "video" or "data"
	Codec    string   `json:"codec,omitempty"`
	Layers   []string `json:"layers,omitempty"` // simulcast rids, low to high
	// The codec's clock rate, channels and fmtp line, and the number of
	// simulcast layers the publisher announced: what another node needs
	// to offer the track to its subscribers (the cascade).
	ClockRate uint32 `json:"clock_rate,omitempty"`
	Channels  uint16 `json:"channels,omitempty"`
	Fmtp      string `json:"fmtp,omitempty"`
	Simulcast int    `json:"simulcast,omitempty"`
}

// Speaker is one participant's audio level in an active speaker event.
type Speaker struct {
	Session  string `json:"session"`
	Identity string `json:"identity"`
	// Level is 0 (silence) to 127 (loudest), the inverse of the RFC 6464
	// -dBov value.
	Level int `json:"level"`
}

// SessionAnnounce maps a session's ICE ufrag to the node holding it, so that
// every node behind a load balancer can route the session's first STUN
// binding (ufrag routing). Gone is set when the session ends.
type SessionAnnounce struct {
	Session string    `json:"session"`
	Room    string    `json:"room"`
	Node    string    `json:"node"`
	Ufrag   string    `json:"ufrag"`
	Gone    bool      `json:"gone,omitempty"`
	Time    time.Time `json:"time"`
}

// Validate checks the fields a node needs.
func (r *Request) Validate() error {
	if r.Type == RequestDrain {
		if r.Drain != nil && (r.Drain.PeriodMillis < 0 || r.Drain.PeriodMillis > MaxDrainPeriod.Milliseconds()) {
			return fmt.Errorf("%w: drain period must be 0-%v", ErrBadMessage, MaxDrainPeriod)
		}
		return nil
	}
	if !ValidName(r.Session) {
		return fmt.Errorf("%w: session %q: %w", ErrBadMessage, r.Session, ErrBadSubjectToken)
	}
	switch r.Type {
	case RequestJoin:
		if r.Join == nil {
			return fmt.Errorf("%w: join without join", ErrBadMessage)
		}
		if !ValidName(r.Join.Room) {
			return fmt.Errorf("%w: room %q: %w", ErrBadMessage, r.Join.Room, ErrBadSubjectToken)
		}
		if r.Join.Identity == "" || len(r.Join.Identity) > 256 {
			return fmt.Errorf("%w: identity must be 1-256 bytes", ErrBadMessage)
		}
		if r.Join.Offer == "" {
			return fmt.Errorf("%w: join without offer", ErrBadMessage)
		}
		if r.Join.ICE != nil {
			if err := r.Join.ICE.Validate(); err != nil {
				return err
			}
		}
	case RequestOffer, RequestAnswer:
		if r.SDP == "" {
			return fmt.Errorf("%w: %s without sdp", ErrBadMessage, r.Type)
		}
	case RequestLayer:
		if r.Layer == nil || r.Layer.Track == "" || len(r.Layer.Track) > 256 || len(r.Layer.StreamID) > 256 ||
			r.Layer.MaxLayer < 0 || r.Layer.MaxLayer > 2 {
			return fmt.Errorf("%w: layer needs a track and max_layer 0-2", ErrBadMessage)
		}
		if r.Layer.Width < 0 || r.Layer.Width > MaxVideoSize || r.Layer.Height < 0 || r.Layer.Height > MaxVideoSize {
			return fmt.Errorf("%w: layer width and height must be 0-%d", ErrBadMessage, MaxVideoSize)
		}
	case RequestMute:
		if r.Mute == nil || r.Mute.Track == "" || len(r.Mute.Track) > 256 {
			return fmt.Errorf("%w: mute needs a track", ErrBadMessage)
		}
	case RequestCandidate, RequestLeave, RequestStats, RequestClaimed:
	default:
		return fmt.Errorf("%w: unknown request type %q", ErrBadMessage, r.Type)
	}
	return nil
}

// Validate checks a node announcement.
func (a *NodeAnnounce) Validate() error {
	if !ValidName(a.Node) {
		return fmt.Errorf("%w: node %q: %w", ErrBadMessage, a.Node, ErrBadSubjectToken)
	}
	if a.UDP == "" {
		return fmt.Errorf("%w: node %s announces no udp address", ErrBadMessage, a.Node)
	}
	if len(a.Rooms) > MaxAnnouncedRooms {
		return fmt.Errorf("%w: node %s announces %d rooms (at most %d)", ErrBadMessage, a.Node, len(a.Rooms), MaxAnnouncedRooms)
	}
	for _, r := range a.Rooms {
		if !ValidName(r) {
			return fmt.Errorf("%w: node %s announces room %q: %w", ErrBadMessage, a.Node, r, ErrBadSubjectToken)
		}
	}
	if a.Group != "" && !ValidName(a.Group) {
		return fmt.Errorf("%w: node %s announces group %q: %w", ErrBadMessage, a.Node, a.Group, ErrBadSubjectToken)
	}
	return ValidRelay(a.Relay, a.RelayID)
}

// ValidRelay checks a node's cascade relay address and id: both absent, or
// an "ip:port" with a port and a non-zero id.
func ValidRelay(addr string, id uint32) error {
	if addr == "" && id == 0 {
		return nil
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || ap.Port() == 0 || !ap.Addr().IsValid() || ap.Addr().IsUnspecified() || ap.Addr().Zone() != "" {
		return fmt.Errorf("%w: relay address %q", ErrBadMessage, addr)
	}
	if id == 0 {
		return fmt.Errorf("%w: relay address %s without a relay id", ErrBadMessage, addr)
	}
	return nil
}

// Validate checks a session message.
func (m *SessionMessage) Validate() error {
	switch m.Type {
	case SessionOffer:
		if m.SDP == "" {
			return fmt.Errorf("%w: offer without sdp", ErrBadMessage)
		}
	case SessionEvent:
		if m.Event == nil {
			return fmt.Errorf("%w: event without event", ErrBadMessage)
		}
	case SessionError:
		if m.Error == nil {
			return fmt.Errorf("%w: error without error", ErrBadMessage)
		}
	case SessionRejoin:
		if m.Reason != RejoinDrain && m.Reason != RejoinNodeFailed {
			return fmt.Errorf("%w: rejoin reason %q", ErrBadMessage, m.Reason)
		}
	case SessionCandidate, SessionClosed, SessionClaim:
	default:
		return fmt.Errorf("%w: unknown session message type %q", ErrBadMessage, m.Type)
	}
	return nil
}

// Validate checks a room event.
func (e *RoomEvent) Validate() error {
	if !ValidName(e.Room) {
		return fmt.Errorf("%w: room %q: %w", ErrBadMessage, e.Room, ErrBadSubjectToken)
	}
	switch e.Type {
	case EventParticipantJoined, EventParticipantLeft, EventActiveSpeaker:
	case EventTrackPublished, EventTrackUnpublished:
		if e.Track == nil {
			return fmt.Errorf("%w: %s without track", ErrBadMessage, e.Type)
		}
	default:
		return fmt.Errorf("%w: unknown room event type %q", ErrBadMessage, e.Type)
	}
	return nil
}

// Validate checks a session announcement.
func (a *SessionAnnounce) Validate() error {
	if !ValidName(a.Session) || !ValidName(a.Node) {
		return fmt.Errorf("%w: session announce: %w", ErrBadMessage, ErrBadSubjectToken)
	}
	if a.Ufrag == "" || len(a.Ufrag) > 256 {
		return fmt.Errorf("%w: session announce: ufrag must be 1-256 bytes", ErrBadMessage)
	}
	return nil
}

// validator is a message that checks itself.
type validator interface{ Validate() error }

// Decode unmarshals one bus message of type T and validates it. It is the
// only way the bus package reads messages, so every decoding goes through
// the same checks (and its fuzz target).
func Decode[T any, PT interface {
	*T
	validator
}](data []byte) (T, error) {
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		return v, fmt.Errorf("%w: %w", ErrBadMessage, err)
	}
	if err := PT(&v).Validate(); err != nil {
		return v, err
	}
	return v, nil
}

// Validate checks a reply: it has an SDP or an error or neither, and an
// error has a status.
func (r *Reply) Validate() error {
	if r.Error != nil && r.Error.Status == "" {
		return fmt.Errorf("%w: reply error without status", ErrBadMessage)
	}
	return nil
}
