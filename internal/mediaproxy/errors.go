package mediaproxy

import "errors"

// Sentinel errors of the media proxy.
var (
	// ErrShortDescriptor: a descriptor header or control message ended
	// before its fixed fields or a length it announced.
	ErrShortDescriptor = errors.New("mediaproxy: descriptor truncated")
	// ErrVersion: the descriptor's version byte is not Version.
	ErrVersion = errors.New("mediaproxy: unknown descriptor version")
	// ErrBadOp: the descriptor's operation is not one of the Op constants.
	ErrBadOp = errors.New("mediaproxy: unknown operation")
	// ErrDirection: the direction flags do not mark exactly one side
	// outside and the other inside.
	ErrDirection = errors.New("mediaproxy: direction flags must mark one side outside and one inside")
	// ErrBadAddress: an endpoint's address family byte is unknown.
	ErrBadAddress = errors.New("mediaproxy: bad endpoint address")
	// ErrCallID: the call id is empty or longer than 255 bytes.
	ErrCallID = errors.New("mediaproxy: call id must be 1-255 bytes")
	// ErrNoPorts: every port of the inside pool is in use.
	ErrNoPorts = errors.New("mediaproxy: inside port pool exhausted")
	// ErrNoSession: the operation names a call or stream the proxy does
	// not hold.
	ErrNoSession = errors.New("mediaproxy: no such session")
	// ErrClosed: the proxy is closed.
	ErrClosed = errors.New("mediaproxy: closed")
	// ErrConfig: the configuration is invalid (wrapped with the reason).
	ErrConfig = errors.New("mediaproxy: invalid config")
	// ErrNotRTP: a packet is too short or not RTP/RTCP version 2.
	ErrNotRTP = errors.New("mediaproxy: not an RTP/RTCP packet")
	// ErrRefusedAddress: the destination policy (Config.Policy) refuses
	// a media address an outside party named: loopback, private,
	// link-local and metadata, CGNAT, multicast, unspecified, ...
	ErrRefusedAddress = errors.New("mediaproxy: media address refused by policy")
	// ErrOwnAddress: a media address names one of the process's own
	// sockets (the fixed ports, the inside pool, the signaling
	// listeners): sending there would loop.
	ErrOwnAddress = errors.New("mediaproxy: media address is the proxy's own")
)
