// Package turn is traverse's TURN relay server (RFC 8656, "Traversal Using
// Relays around NAT"): allocations with relayed UDP addresses for clients
// that reach the server over UDP, TCP or TLS; Allocate, Refresh,
// CreatePermission and ChannelBind requests (RFC 8656 sections 7-12), Send
// and Data indications (section 11) and ChannelData messages (section 12);
// long-term credentials (RFC 8489 section 9.2) with expiring nonces (438
// Stale Nonce) and time-limited credentials minted from a shared secret (the
// TURN REST API of draft-uberti-behave-turn-rest, coturn's use-auth-secret).
// The listener also answers STUN Binding requests (RFC 8489). Clients on
// TCP or TLS may ask for TCP relays instead (RFC 6062: Connect,
// ConnectionBind, ConnectionAttempt; tcprelay.go).
//
// The server owns its data path instead of wrapping pion/turn's server,
// which reads each relay socket from its own goroutine and allocates per
// packet. Here:
//
//   - client sockets are internal/udpio batched sockets: one recvmmsg moves
//     every queued datagram, ChannelData is sent on to the peer with one
//     sendto straight from the receive buffer, its 4-byte header skipped;
//   - every relay socket of every allocation is a raw non-blocking socket
//     in one epoll set, served by one goroutine: it drains each ready
//     socket with recvmmsg into buffers that keep 48 bytes of headroom, so
//     the ChannelData header (or the Data indication header) is written in
//     front of the payload in place, and sends the whole batch to the
//     clients with one sendmmsg. No goroutine, buffer or Go socket object is
//     held by an idle allocation (a few hundred bytes of heap each);
//   - 5-tuples, permissions and channels are keyed by netip values.
//
// Peers are filtered (safe by default): loopback, unspecified, private
// (RFC 1918, RFC 4193), carrier-grade NAT (RFC 6598), link-local (including
// the 169.254.169.254 metadata service), multicast and broadcast addresses,
// their IPv4-mapped IPv6 forms, and the server's own addresses are refused
// with 403 Forbidden unless the operator's allow list says otherwise.
//
// Relay sockets come from a port range, one per allocation while the range
// lasts; past it, allocations share relay sockets demultiplexed by peer
// address (coturn's multiplex-peer idea), and only with sharing off does an
// exhausted range get 508 Insufficient Capacity. See docs/turn.md.
package turn
