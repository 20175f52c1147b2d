// Package p2pwire holds the messages of signal's P2P protocols that the
// server (internal/signal) and the client (client/p2p) both speak, so the
// two cannot drift: the /p2p rendezvous message (internal/signal/p2p.go
// describes the exchange) and the parts of a relay node request and offer
// (POST /relay/nodes) that are the same on both sides. It imports neither.
package p2pwire

import (
	"encoding/json"

	"github.com/traverse-rtc/traverse/client/nat"
)

// Message is one message of the /p2p protocol, both ways.
type Message struct {
	Type  string          `json:"type"`
	Token string          `json:"token,omitempty"`
	Room  string          `json:"room,omitempty"`
	Name  string          `json:"name,omitempty"`
	To    string          `json:"to,omitempty"`
	From  string          `json:"from,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
	Error string          `json:"error,omitempty"`
}

// RelayNAT is a peer's NAT as client/nat found it, in a request for relay
// nodes (signal's POST /relay/nodes) and the p2p "nat" message.
type RelayNAT struct {
	NAT        bool         `json:"nat"`
	UDPBlocked bool         `json:"udp_blocked"`
	Mapping    nat.Behavior `json:"mapping"`
	Filtering  nat.Behavior `json:"filtering"`
}

// RelayOfferNode is one relay node of signal's answer, to try in order,
// with the grants of both sides (base64url, no padding): Grants[0] the
// requester's, Grants[1] the peer's.
type RelayOfferNode struct {
	ID     string    `json:"id"`
	Region string    `json:"region,omitempty"`
	Addr   string    `json:"addr"`
	Grants [2]string `json:"grants"`
}
