// Package stun is traverse's STUN server: RFC 8489 Binding over UDP, TCP and
// TLS, answering with XOR-MAPPED-ADDRESS (RFC 8489 section 14.2), SOFTWARE
// (14.14) only when configured and FINGERPRINT (14.7) only when the request
// carried one, and, when given a second IP address, the RFC 5780 NAT
// behaviour discovery server: four UDP sockets (two IPs by two ports),
// OTHER-ADDRESS (RFC 5780 section 7.4), CHANGE-REQUEST (7.2),
// RESPONSE-ORIGIN (7.3), RESPONSE-PORT (7.5) and PADDING (7.6).
//
// Requests are unauthenticated and UDP sources can be spoofed, so answers
// stay small (1.6x a plain request; 2.8x on an RFC 5780 server) and each
// source (IPv4 address, IPv6 /64) is answered at most Config.Rate times a
// second. TCP and TLS connections are capped in total and per source, and
// closed when no request is answered within Config.FirstMessageTimeout or
// for Config.IdleTimeout.
//
// The UDP path reads and writes in batches through internal/udpio and
// allocates nothing per request: each reader owns a handler whose decoded
// request (a reused pion/stun Message) and response bytes (appended into the
// outgoing batch buffer) live as long as the reader. Malformed and non-STUN
// datagrams are dropped and counted by reason.
package stun
