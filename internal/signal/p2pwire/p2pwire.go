// Package p2pwire is the message of signal's /p2p rendezvous protocol
// (internal/signal/p2p.go describes the exchange), shared by the server
// (internal/signal) and the client (client/p2p) so the two cannot drift.
// It imports nothing of either.
package p2pwire

import "encoding/json"

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
