package relaywire

import "encoding/binary"

// Kind says what a data message carries.
type Kind uint8

// Message kinds.
const (
	// KindMedia: an RTP packet of a published track, travelling from the
	// publisher's node towards the nodes whose subscribers need it.
	KindMedia Kind = 1
	// KindFeedback: an RTCP packet (PLI, FIR, NACK) or a layer choice for a
	// publisher's track, travelling back to the publisher's node.
	KindFeedback Kind = 2
	maxKind           = KindFeedback
)

// Limits of the relay header's fields.
const (
	// MaxDst is the most destination nodes one message names. A message for
	// more nodes is split by the sender.
	MaxDst = 16
	// MaxName is the longest room, publisher or track name, in bytes.
	MaxName = 64
	// DefaultHopLimit is the hop limit a sender writes when it has no
	// better bound: a cascade deeper than this is a loop.
	DefaultHopLimit = 8
	// DataSeqLen is the link sequence number before a data message.
	DataSeqLen = 4
	fixedLen   = 16
)

// Header is the relay header of a data message:
//
//	0      kind
//	1      hop limit: decremented by every hop; a message arriving with 1
//	       is delivered locally but forwarded no further
//	2      layer (simulcast spatial layer)
//	3      number of destinations n (1..MaxDst)
//	4-7    source node (where the message entered the cascade)
//	8-11   route id (the route table generation the source used)
//	12-15  sequence number (the source's, per track and layer)
//	16..   n destination nodes, 4 bytes each
//	then   room, publisher, track: each one length byte (0..MaxName) and its bytes
//	then   the payload (an RTP or RTCP packet) to the end of the message
//
// On Parse, Room, Publisher and Track point into the parsed buffer.
type Header struct {
	Kind      Kind
	HopLimit  uint8
	Layer     uint8
	NDst      uint8
	Source    NodeID
	RouteID   uint32
	Seq       uint32
	Dst       [MaxDst]NodeID
	Room      []byte
	Publisher []byte
	Track     []byte
}

// Dests returns the destinations.
func (h *Header) Dests() []NodeID { return h.Dst[:h.NDst] }

// Len is the encoded size of h (without payload).
func (h *Header) Len() int {
	return fixedLen + 4*int(h.NDst) + 3 + len(h.Room) + len(h.Publisher) + len(h.Track)
}

// AppendHeader appends h to b.
func AppendHeader(b []byte, h *Header) ([]byte, error) {
	if h.NDst == 0 || h.NDst > MaxDst || len(h.Room) > MaxName || len(h.Publisher) > MaxName || len(h.Track) > MaxName {
		return b, ErrTooLong
	}
	if h.Kind == 0 || h.Kind > maxKind || h.HopLimit == 0 {
		return b, ErrField
	}
	b = append(b, byte(h.Kind), h.HopLimit, h.Layer, h.NDst)
	b = binary.BigEndian.AppendUint32(b, uint32(h.Source))
	b = binary.BigEndian.AppendUint32(b, h.RouteID)
	b = binary.BigEndian.AppendUint32(b, h.Seq)
	for _, d := range h.Dst[:h.NDst] {
		b = binary.BigEndian.AppendUint32(b, uint32(d))
	}
	b = append(b, byte(len(h.Room)))
	b = append(b, h.Room...)
	b = append(b, byte(len(h.Publisher)))
	b = append(b, h.Publisher...)
	b = append(b, byte(len(h.Track)))
	b = append(b, h.Track...)
	return b, nil
}

// ParseHeader reads a relay header from b into h and returns the payload
// after it.
func ParseHeader(b []byte, h *Header) (payload []byte, err error) {
	if len(b) < fixedLen {
		return nil, ErrShort
	}
	h.Kind = Kind(b[0])
	h.HopLimit = b[1]
	h.Layer = b[2]
	h.NDst = b[3]
	if h.Kind == 0 || h.Kind > maxKind || h.HopLimit == 0 || h.NDst == 0 || h.NDst > MaxDst {
		return nil, ErrField
	}
	h.Source = NodeID(binary.BigEndian.Uint32(b[4:]))
	h.RouteID = binary.BigEndian.Uint32(b[8:])
	h.Seq = binary.BigEndian.Uint32(b[12:])
	off := fixedLen
	if len(b) < off+4*int(h.NDst) {
		return nil, ErrShort
	}
	for i := 0; i < int(h.NDst); i++ {
		h.Dst[i] = NodeID(binary.BigEndian.Uint32(b[off:]))
		off += 4
	}
	for _, f := range [...]*[]byte{&h.Room, &h.Publisher, &h.Track} {
		if len(b) < off+1 {
			return nil, ErrShort
		}
		n := int(b[off])
		off++
		if n > MaxName {
			return nil, ErrField
		}
		if len(b) < off+n {
			return nil, ErrShort
		}
		*f = b[off : off+n : off+n]
		off += n
	}
	return b[off:], nil
}

// AppendData appends a data body: the link sequence seq, then msg (a relay
// header and its payload, as AppendHeader wrote it).
func AppendData(b []byte, seq uint32, msg []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, seq)
	return append(b, msg...)
}

// ParseData splits a data body into its link sequence and its message.
func ParseData(b []byte) (seq uint32, msg []byte, err error) {
	if len(b) < DataSeqLen {
		return 0, nil, ErrShort
	}
	return binary.BigEndian.Uint32(b), b[DataSeqLen:], nil
}
