// Package srtpseal is the SFU's own SRTP: AEAD_AES_128_GCM and
// AEAD_AES_256_GCM sealing and opening of RTP in place (RFC 7714, GCM),
// and the SRTP keys of a peer connection taken from pion's DTLS handshake
// through its public hooks (Secrets, RFC 5705 and RFC 5764 section 4.2).
//
// The coupling to pion's DTLS internals (the key log line, the
// ServerHello hook, the exporter's seed order) lives here alone, behind
// Secrets.Attach, Local and Remote, so that a change in pion breaks this
// package's tests (TestDTLSSecretsExporter runs real pion/dtls
// handshakes) and nothing else. GCM's output is byte for byte pion's
// srtp.Context's (TestSRTPGCMMatchesPion, TestSRTPGCMOpenMatchesPion);
// the AES-CM/HMAC profiles stay with pion's context.
package srtpseal
