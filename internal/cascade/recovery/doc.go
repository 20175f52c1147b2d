// Package recovery is the loss recovery of one relay link direction, as
// pure state machines driven by the caller's clock (no sockets, no
// goroutines): the Sender numbers data messages, keeps a bounded history
// for retransmission and closes Reed-Solomon FEC groups (k data + m parity
// shards, klauspost/reedsolomon), with m chosen by ParityFor from the
// link's measured loss (the data messages FEC leaves unrepaired, Residual)
// and its RTT (what the NACK rounds that fit the playout deadline can
// still repair, NackRounds); the Receiver drops duplicates, rebuilds lost
// messages from parity, says which sequences to NACK and when (after
// their group's parity had its chance), and measures the link's loss
// before recovery (reported back in relaywire.Echo).
//
// The frames themselves are relaywire's (TypeData, TypeParity, TypeNack);
// the relay endpoint (package relay) seals and sends what these return.
package recovery
