package mediaproxy

import (
	"encoding/binary"
	"net/netip"
)

// Version is the descriptor header version this package speaks.
const Version = 1

// Op is what a control message asks of the media proxy.
type Op uint8

const (
	// OpUpsert creates the stream (allocating its inside port pair) or
	// updates the fields the descriptor carries (non-zero endpoints, the
	// SSRC when FlagSSRC is set).
	OpUpsert Op = 1
	// OpDelete removes one stream, or every stream of the call when Index
	// is AllStreams, releasing their ports and kernel flows.
	OpDelete Op = 2
	// OpQuery returns the stream's ports and counters without changing it.
	OpQuery Op = 3
)

// AllStreams as a descriptor Index with OpDelete names every stream of a call.
const AllStreams = 0xff

// Flags are the descriptor's flag bits.
type Flags uint8

const (
	// FlagCallerOutside marks the calling side (the sender of the INVITE)
	// as the outside network; FlagCalleeOutside marks the called side.
	// Exactly one of the two is set: the descriptor's direction flags, one per
	// side. Caller outside means the client calls the inside server.
	FlagCallerOutside Flags = 1 << 0
	FlagCalleeOutside Flags = 1 << 1
	// FlagSSRC says the SSRC field is the stream's SSRC (from a=ssrc);
	// without it the proxy learns the SSRC by latching (see Proxy).
	FlagSSRC Flags = 1 << 2
)

// Kind is the media kind of a stream.
type Kind uint8

// Media kinds; audio and video of one call are separate streams.
const (
	KindAudio Kind = 0
	KindVideo Kind = 1
	KindOther Kind = 2
)

func (k Kind) String() string {
	switch k {
	case KindAudio:
		return "audio"
	case KindVideo:
		return "video"
	}
	return "other"
}

// Descriptor is the control protocol's descriptor header: which side is outside, the
// stream's SSRC, and the endpoints the signaling proxy has learnt from SDP.
//
// Wire format (all integers big-endian):
//
//	0: version (1)   1: op   2: flags   3: kind
//	4: SSRC (4 bytes)
//	8: stream index (m-line number)   9: call id length L   10: call id (L bytes)
//	then four endpoints: client RTP, client RTCP, server RTP, server RTCP,
//	each: family (0 none, 4 IPv4, 6 IPv6), address (0, 4 or 16 bytes), port (2 bytes, absent when family is 0)
type Descriptor struct {
	Op     Op
	Flags  Flags
	Kind   Kind
	SSRC   uint32
	Index  uint8
	CallID string
	// Client is the outside client's media address from its SDP; Server
	// the inside server's. A zero value means "not known yet" (the
	// answer has not arrived) and leaves the stored value alone.
	Client, ClientRTCP netip.AddrPort
	Server, ServerRTCP netip.AddrPort
}

// CallerOutside reports whether the call goes from outside to inside.
func (d *Descriptor) CallerOutside() bool { return d.Flags&FlagCallerOutside != 0 }

func (d *Descriptor) validate() error {
	if d.Op < OpUpsert || d.Op > OpQuery {
		return ErrBadOp
	}
	if len(d.CallID) == 0 || len(d.CallID) > 255 {
		return ErrCallID
	}
	if d.Op == OpUpsert {
		dir := d.Flags & (FlagCallerOutside | FlagCalleeOutside)
		if dir != FlagCallerOutside && dir != FlagCalleeOutside {
			return ErrDirection
		}
	}
	return nil
}

// AppendDescriptor appends d's wire form to b.
func AppendDescriptor(b []byte, d *Descriptor) []byte {
	b = append(b, Version, byte(d.Op), byte(d.Flags), byte(d.Kind))
	b = binary.BigEndian.AppendUint32(b, d.SSRC)
	id := d.CallID
	if len(id) > 255 {
		id = id[:255]
	}
	b = append(b, d.Index, byte(len(id)))
	b = append(b, id...)
	for _, ap := range [...]netip.AddrPort{d.Client, d.ClientRTCP, d.Server, d.ServerRTCP} {
		b = appendEndpoint(b, ap)
	}
	return b
}

func appendEndpoint(b []byte, ap netip.AddrPort) []byte {
	a := ap.Addr().Unmap()
	switch {
	case !ap.IsValid():
		return append(b, 0)
	case a.Is4():
		v := a.As4()
		b = append(b, 4)
		b = append(b, v[:]...)
	default:
		v := a.As16()
		b = append(b, 6)
		b = append(b, v[:]...)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

// ParseDescriptor decodes a descriptor header from b and returns it with
// the number of bytes it took. It validates the fields (operation,
// direction flags, call id), so a returned descriptor is safe to apply.
func ParseDescriptor(b []byte) (Descriptor, int, error) {
	var d Descriptor
	if len(b) < 10 {
		return d, 0, ErrShortDescriptor
	}
	if b[0] != Version {
		return d, 0, ErrVersion
	}
	d.Op, d.Flags, d.Kind = Op(b[1]), Flags(b[2]), Kind(b[3])
	d.SSRC = binary.BigEndian.Uint32(b[4:8])
	d.Index = b[8]
	l := int(b[9])
	off := 10
	if len(b) < off+l {
		return d, 0, ErrShortDescriptor
	}
	d.CallID = string(b[off : off+l])
	off += l
	eps := [...]*netip.AddrPort{&d.Client, &d.ClientRTCP, &d.Server, &d.ServerRTCP}
	for _, ep := range eps {
		n, err := parseEndpoint(b[off:], ep)
		if err != nil {
			return d, 0, err
		}
		off += n
	}
	if err := d.validate(); err != nil {
		return d, 0, err
	}
	return d, off, nil
}

func parseEndpoint(b []byte, ap *netip.AddrPort) (int, error) {
	if len(b) < 1 {
		return 0, ErrShortDescriptor
	}
	var alen int
	switch b[0] {
	case 0:
		*ap = netip.AddrPort{}
		return 1, nil
	case 4:
		alen = 4
	case 6:
		alen = 16
	default:
		return 0, ErrBadAddress
	}
	if len(b) < 1+alen+2 {
		return 0, ErrShortDescriptor
	}
	a, _ := netip.AddrFromSlice(b[1 : 1+alen])
	*ap = netip.AddrPortFrom(a.Unmap(), binary.BigEndian.Uint16(b[1+alen:]))
	return 1 + alen + 2, nil
}
