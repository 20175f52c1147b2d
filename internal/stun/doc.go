// Package stun is traverse's STUN server: RFC 8489 Binding over UDP, TCP and
// TLS, answering with XOR-MAPPED-ADDRESS (RFC 8489 section 14.2), SOFTWARE
// (14.14) and FINGERPRINT (14.7), and, when given a second IP address, the
// RFC 5780 NAT behaviour discovery server: four UDP sockets (two IPs by two
// ports), OTHER-ADDRESS (RFC 5780 section 7.4), CHANGE-REQUEST (7.2),
// RESPONSE-ORIGIN (7.3), RESPONSE-PORT (7.5) and PADDING (7.6).
//
// The UDP path reads and writes in batches through internal/udpio and
// allocates nothing per request: each reader owns a handler whose decoded
// request (a reused pion/stun Message) and response bytes (appended into the
// outgoing batch buffer) live as long as the reader. Malformed and non-STUN
// datagrams are dropped and counted by reason.
package stun
