// Package p2p connects two peers that know each other only through a
// signaling service, peer to peer first and through a relay last, and
// carries datagrams (media) between them, end-to-end encrypted.
//
// Connect runs this sequence (docs/p2p.md has the details and the wire
// formats):
//
//  1. Direct first. The UDP socket asks every STUN server at once; the
//     first to answer (the lowest RTT) gives the public address. The NAT's
//     mapping and filtering behaviour is found with client/nat (RFC 5780)
//     once the direct attempt is over, and sent to the peer. Candidates (host,
//     server-reflexive; with the port step when a second STUN request
//     shows a sequential symmetric NAT, so that the peer also probes the
//     ports it will hand out next) go to the peer through signaling while the peers
//     run a Noise XX handshake through it. Both sides then send
//     authenticated test packets (probes) to every candidate of the other;
//     a side that receives one answers with an ack (and probes the source
//     back: a symmetric NAT's new mapping becomes a peer-reflexive
//     candidate). The direct path is up when an ack arrives. In parallel
//     with STUN the home router is asked for a port mapping (client/portmap:
//     PCP, NAT-PMP, UPnP IGD; WithPortMap, on by default with the host's
//     network): its external address is one more ("mapped") candidate.
//  2. A relay node both peers reach (WithRelayNodes, on both sides): after
//     the direct timeout the caller asks signaling (SignalRelayNodes: POST
//     /relay/nodes) for nodes compatible with both peers' NATs, nearest
//     first, hands the peer its grants, and both bind them in order from
//     the direct socket; the first node both reach carries the flow
//     (PathRelayNode), a node one peer cannot reach is abandoned for the
//     next.
//  3. TURN last, once no relay node worked: an allocation over UDP, then
//     TCP, then TLS; its relayed address goes to the peer as a candidate
//     and is probed like the others.
//
// After a fallback (relay node or TURN) the direct pairs stay probed (every 500 ms by default)
// and the flow moves to direct as soon as an ack comes back. Data carries a
// sequence number; the receiver's reorder buffer puts datagrams still in
// flight on the old path back in order, so a handover loses nothing.
//
// Every datagram is sealed with ChaCha20-Poly1305 under a key of its
// direction from the handshake, with an explicit nonce checked against a
// sliding replay window: relays see only ciphertext, and a third party can
// neither fake a probe or ack (to hijack the path) nor replay one. Forged,
// replayed and malformed packets are dropped and counted (Stats).
package p2p
