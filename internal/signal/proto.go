package signal

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Client-to-server message types (docs/signal.md).
const (
	TypeJoin      = "join"
	TypeOffer     = "offer"
	TypeAnswer    = "answer"
	TypeCandidate = "candidate"
	TypeLeave     = "leave"
	TypePing      = "ping"
	// TypeLayer: the client says which simulcast layer, or at what size,
	// it wants a received track (docs/signal.md).
	TypeLayer = "layer"
)

// Server-to-client message types. TypeOffer, TypeAnswer and TypeCandidate
// travel both ways.
const (
	TypeJoined      = "joined"
	TypeParticipant = "participant"
	TypeTrack       = "track"
	TypeSpeakers    = "speakers"
	TypeError       = "error"
	TypePong        = "pong"
	TypeBye         = "bye"
	// TypeRejoin: the client's node failed or is draining; the server
	// has dropped the client's session there, and the client joins again
	// on the same WebSocket with the same token (a new peer connection,
	// republishing and resubscribing). Reason is RejoinNodeFailed or
	// RejoinDrain. docs/signal.md, "Rejoin".
	TypeRejoin = "rejoin"
)

// Rejoin reasons (ServerMessage.Reason of TypeRejoin).
const (
	RejoinNodeFailed = "node_failed"
	RejoinDrain      = "drain"
)

// Events carried by TypeParticipant (joined, left) and TypeTrack
// (published, unpublished) messages.
const (
	EventJoined      = "joined"
	EventLeft        = "left"
	EventPublished   = "published"
	EventUnpublished = "unpublished"
)

// maxSDPLen bounds an SDP body; a browser offer with three simulcast video
// layers, audio and data is about 8 KB.
const maxSDPLen = 48 << 10

// maxCandidateLen bounds one ICE candidate line.
const maxCandidateLen = 1024

// Candidate is one trickled ICE candidate, shaped like the browser's
// RTCIceCandidateInit so the page can pass it through unchanged. An empty
// Candidate string means the end of candidates.
type Candidate struct {
	Candidate        string  `json:"candidate"`
	SDPMid           *string `json:"sdpMid,omitempty"`
	SDPMLineIndex    *uint16 `json:"sdpMLineIndex,omitempty"`
	UsernameFragment string  `json:"usernameFragment,omitempty"`
}

// ClientMessage is every message a client may send; Type says which fields
// matter. DecodeClient fills and validates it.
type ClientMessage struct {
	Type string `json:"type"`
	// Token is join's access token (see ParseToken).
	Token string `json:"token,omitempty"`
	// SDP is the body of an offer or answer.
	SDP string `json:"sdp,omitempty"`
	// Candidate is a trickled ICE candidate.
	Candidate *Candidate `json:"candidate,omitempty"`

	// layer: Track ("*": every received track) and, optionally, StreamID
	// name a received track as the track message and ontrack show it
	// (track.id, streams[0].id). Either MaxLayer caps its simulcast layer
	// (0 low - 2 high), or Width and Height say at what size in device
	// pixels the client shows it and the node picks the layer.
	Track    string `json:"track,omitempty"`
	StreamID string `json:"streamId,omitempty"`
	MaxLayer *int   `json:"maxLayer,omitempty"`
	Width    int    `json:"width,omitempty"`
	Height   int    `json:"height,omitempty"`
}

// maxVideoSize bounds a layer message's width and height.
const maxVideoSize = 16384

// DecodeClient parses one inbound WebSocket text message. Unknown fields are
// ignored (forward compatibility); unknown types, missing required fields
// and oversized fields are errors wrapping ErrMessage.
func DecodeClient(b []byte) (ClientMessage, error) {
	var m ClientMessage
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return m, fmt.Errorf("%w: not a JSON object", ErrMessage)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return ClientMessage{}, fmt.Errorf("%w: %w", ErrMessage, err)
	}
	if err := m.validate(); err != nil {
		return ClientMessage{}, err
	}
	return m, nil
}

func (m *ClientMessage) validate() error {
	switch m.Type {
	case TypeJoin:
		if m.Token == "" {
			return fmt.Errorf("%w: join needs a token", ErrMessage)
		}
		if len(m.Token) > maxTokenLen {
			return fmt.Errorf("%w: token too long", ErrMessage)
		}
	case TypeOffer, TypeAnswer:
		if m.SDP == "" {
			return fmt.Errorf("%w: %s needs sdp", ErrMessage, m.Type)
		}
		if len(m.SDP) > maxSDPLen {
			return fmt.Errorf("%w: sdp longer than %d bytes", ErrMessage, maxSDPLen)
		}
	case TypeCandidate:
		if m.Candidate == nil {
			return fmt.Errorf("%w: candidate needs candidate", ErrMessage)
		}
		if len(m.Candidate.Candidate) > maxCandidateLen || len(m.Candidate.UsernameFragment) > 256 ||
			m.Candidate.SDPMid != nil && len(*m.Candidate.SDPMid) > 64 {
			return fmt.Errorf("%w: candidate too long", ErrMessage)
		}
		if m.Candidate.Candidate != "" {
			if _, err := ParseCandidate(m.Candidate.Candidate); err != nil {
				return err
			}
		}
	case TypeLayer:
		if m.Track == "" || len(m.Track) > 256 || len(m.StreamID) > 256 {
			return fmt.Errorf("%w: layer needs a track (at most 256 bytes)", ErrMessage)
		}
		if m.Width < 0 || m.Width > maxVideoSize || m.Height < 0 || m.Height > maxVideoSize {
			return fmt.Errorf("%w: layer width and height must be 0-%d", ErrMessage, maxVideoSize)
		}
		switch {
		case m.Width > 0 || m.Height > 0:
		case m.MaxLayer == nil:
			return fmt.Errorf("%w: layer needs maxLayer or width and height", ErrMessage)
		case *m.MaxLayer < 0 || *m.MaxLayer > 2:
			return fmt.Errorf("%w: maxLayer must be 0-2", ErrMessage)
		}
	case TypeLeave, TypePing, TypeSFURelease:
	case TypeP2POffer, TypeP2PAnswer, TypeP2PCandidate:
		return m.validateP2P()
	case "":
		return fmt.Errorf("%w: no type", ErrMessage)
	default:
		return fmt.Errorf("%w: unknown type %.32q", ErrMessage, m.Type)
	}
	return nil
}

// Track is one published track as subscribers see it: ID and StreamID are
// the msid in the SFU's offer (the ontrack event's track.id and
// streams[0].id), so a client maps a received track to its participant.
type Track struct {
	ID       string `json:"id"`
	StreamID string `json:"streamId,omitempty"`
	// Kind is "audio", "video" or "data".
	Kind  string `json:"kind"`
	Codec string `json:"codec,omitempty"`
	// Layers are the simulcast rids, low to high, when simulcast.
	Layers []string `json:"layers,omitempty"`
}

// Participant is one member of a room.
type Participant struct {
	// ID is the session id, unique per connection (a reconnecting
	// identity gets a new one).
	ID       string `json:"id"`
	Identity string `json:"identity"`
}

// Speaker is one participant's audio level in a speakers message.
type Speaker struct {
	ID       string `json:"id"`
	Identity string `json:"identity,omitempty"`
	// Level is 0 (silence) to 127 (loudest).
	Level int `json:"level"`
}

// ICEServer is handed to the browser as an RTCIceServer.
type ICEServer struct {
	URLs       []string `json:"urls"`
	Username   string   `json:"username,omitempty"`
	Credential string   `json:"credential,omitempty"`
}

// ServerMessage is every message the server sends; Type says which fields
// are set.
type ServerMessage struct {
	Type string `json:"type"`

	// joined
	Room          string        `json:"room,omitempty"`
	Identity      string        `json:"identity,omitempty"`
	ParticipantID string        `json:"participantId,omitempty"`
	Node          string        `json:"node,omitempty"`
	Region        string        `json:"region,omitempty"`
	Publish       *bool         `json:"publish,omitempty"`
	Subscribe     *bool         `json:"subscribe,omitempty"`
	ICEServers    []ICEServer   `json:"iceServers,omitempty"`
	Participants  []Participant `json:"participants,omitempty"`

	// offer, answer
	SDP string `json:"sdp,omitempty"`
	// candidate
	Candidate *Candidate `json:"candidate,omitempty"`

	// participant, track
	Event       string       `json:"event,omitempty"`
	Participant *Participant `json:"participant,omitempty"`
	Track       *Track       `json:"track,omitempty"`

	// speakers: loudest first; empty when nobody speaks.
	Speakers []Speaker `json:"speakers,omitempty"`

	// error
	Class   string `json:"class,omitempty"`
	Message string `json:"message,omitempty"`
	// Fatal says the server closes the connection after this error.
	Fatal bool `json:"fatal,omitempty"`

	// rejoin
	Reason string `json:"reason,omitempty"`

	// mode (TypeMode, peer-to-peer rooms): Mode is ModeP2P or ModeSFU;
	// with ModeP2P, Peer is the other member (absent when alone) and
	// Initiator says this client makes the P2P offer. joined carries Mode
	// when the server runs peer-to-peer rooms.
	Mode      string       `json:"mode,omitempty"`
	Peer      *Participant `json:"peer,omitempty"`
	Initiator bool         `json:"initiator,omitempty"`
	// From is the sender's participant id on a relayed p2p-offer,
	// p2p-answer or p2p-candidate.
	From string `json:"from,omitempty"`

	// mute (TypeMute, with Track and Message): the operator asks the client
	// to stop (true) or resume (false) sending the track.
	Muted *bool `json:"muted,omitempty"`
}

// errorMessage builds the error message for err.
func errorMessage(err error, fatal bool) ServerMessage {
	return ServerMessage{Type: TypeError, Class: Class(err), Message: err.Error(), Fatal: fatal}
}
