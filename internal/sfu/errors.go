package sfu

import "errors"

// Sentinel errors of the sfu package.
var (
	// ErrConfig is returned for an invalid Config.
	ErrConfig = errors.New("sfu: invalid config")
)

var (
	// errNoOffer: a glare was to be resolved but the node has no
	// outstanding offer or no client description to answer it with.
	errNoOffer = errors.New("sfu: no outstanding offer to withdraw")
	// errNoMid: an m-section of the node's offer has no mid (RFC 8843
	// section 9.1 requires one under BUNDLE).
	errNoMid = errors.New("sfu: offer m-section without mid")
	// errNoUDPPair: an own-path session's RTCP has no UDP destination (its
	// selected pair is over TCP); it is dropped (rtcpout.go).
	errNoUDPPair = errors.New("sfu: own data path: no UDP pair")
	// errRTCPTooLong: sealed RTCP longer than the own data path's MTU.
	errRTCPTooLong = errors.New("sfu: own data path: rtcp longer than the MTU")
	// errRTCPNotBound: RTCP written before pion bound the peer
	// connection's writer.
	errRTCPNotBound = errors.New("sfu: rtcp writer not bound")
)
