// Package relaywire is the wire format of traverse's cascade relay protocol
// between SFU nodes (docs/relay-protocol.md is the specification): the link
// header every datagram starts with, the relay header of a media or feedback
// message, the link's control messages (FEC parity, NACK, probe, echo), and
// the link's AEAD (AES-128-GCM, version 2, with a key derived by HKDF-SHA256 from the
// cluster secret, both node ids and an epoch) with its replay window.
//
// Parsers are pure functions over []byte that return values pointing into
// the caller's buffer; encoders append to the caller's buffer. Nothing here
// allocates per packet when the caller's buffers have room.
package relaywire
