package rtpfeedback

import "errors"

var (
	// ErrInterval is returned by New and NewFactory for a zero or negative
	// feedback interval.
	ErrInterval = errors.New("rtpfeedback: interval must be positive")
	// ErrMaxNACKs is returned for a per-packet NACK limit above 255.
	ErrMaxNACKs = errors.New("rtpfeedback: at most 255 NACKs per packet")
	// ErrSkipLastN is returned for a NACK skip count not below the receive
	// log's 512 packets.
	ErrSkipLastN = errors.New("rtpfeedback: skip-last-N must be below 512")

	// ErrShortRTCP is returned by the sender report scan for a compound
	// RTCP packet shorter than its headers say (RFC 3550 section 6.4.1).
	ErrShortRTCP = errors.New("rtpfeedback: rtcp packet truncated")
	// ErrRTCPVersion is returned for an RTCP header whose version is not 2.
	ErrRTCPVersion = errors.New("rtpfeedback: rtcp version is not 2")
)
