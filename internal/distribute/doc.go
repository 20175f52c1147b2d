// Package distribute is the media distribution table and its batched
// user-space data path: one incoming media stream (a destination address
// and port of this server, optionally narrowed to one RTP SSRC) goes to a
// list of receiver addresses, each packet sent to every receiver.
//
// The table (Table) is copy-on-write: changes are made under a mutex on
// the authoritative state and published as a new immutable snapshot
// through an atomic pointer; the data path loads the snapshot once per
// received batch and takes no lock per packet. A change is therefore in
// force for every packet read after the call that made it returns.
//
// The data path (Server) reads each listening socket with recvmmsg and
// writes a batch's copies with sendmmsg from the same socket
// (internal/udpio), sharing the received buffer between all copies
// (nothing is copied per receiver, nothing allocated per packet).
// Packets are classified by their first bytes (RFC 3550 version 2; RTCP
// by packet types 192-223, RFC 5761 section 4):
//
//   - RTP or RTCP from the stream's sender: sent to every receiver, with
//     per-receiver packet and byte counters and the last time sent;
//   - RTCP from a receiver (its reports, sent back to the port it gets
//     the stream from): marks the receiver alive (last heard), counted,
//     not forwarded;
//   - anything else (not RTP/RTCP, no stream for its port and SSRC, or a
//     sender other than the stream's source when it names one): counted
//     by reason and dropped. The port is ours alone, so there is no
//     "normal path" to pass it to; the kernel path (internal/kfast/distribution) passes such
//     packets up the stack, where they reach this socket and are dropped
//     and counted here.
//
// A receiver that stops answering is removed after a timeout and counted:
// ICMP port unreachable for its address (IP_RECVERR on the socket) for
// UnreachableTimeout with no RTCP heard since, or no RTCP from it for
// RTCPTimeout.
package distribute
