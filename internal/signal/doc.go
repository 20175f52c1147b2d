// Package signal is the client-facing signaling service of the SFU (kept
// apart from media, on its own nodes): browsers and other clients open a
// WebSocket, present a token, and exchange SDP offers and answers (RFC 8829
// JSEP, in both directions: the SFU renegotiates to add the tracks a
// client subscribes to) and trickled ICE candidates (RFC 8838) with the SFU
// node chosen for them; they receive room events (participants, tracks,
// active speakers). The protocol is JSON text frames, documented in
// docs/signal.md.
//
// The package parses and writes SDP (RFC 8866, pion/sdp) but never touches
// media: it validates offers, takes the client's ICE ufrag (RFC 8839
// section 5.4) for the session announcement, and rewrites the node's host
// candidates to the node's public address. It reaches SFU nodes only
// through a Backend (the NATS bus in production). It picks the node from
// the nodes' announcements (region, load, rooms already placed) and the
// client's real address (X-Forwarded-For from trusted proxies).
//
// Tokens are HS256 JWTs (RFC 7519, RFC 7515, RFC 7518 section 3.2) naming
// the room, the identity, the publish and subscribe rights and the expiry.
package signal
