package relaywire

import "encoding/binary"

// Limits of the control messages.
const (
	// MaxNack is the most link sequences one NACK names.
	MaxNack = 128
	// MaxShards is the most data shards (K) and the most parity shards (M)
	// of one FEC group.
	MaxShards = 32
	// MaxShardLen is the longest shard: a data message and its 2-byte length.
	MaxShardLen = 1500
	parityFixed = 10
	probeLen    = 12
	echoLen     = 16
)

// Parity is one Reed-Solomon parity shard of a FEC group over the data
// messages with link sequences Base .. Base+K-1:
//
//	0-3    base link sequence
//	4      K data shards (1..MaxShards)
//	5      M parity shards (1..MaxShards)
//	6      this shard's index among the parity shards (0..M-1)
//	7      reserved, 0
//	8-9    shard length (the longest data shard: 2 + message length, so >= 2)
//	10..   the shard
//
// A data shard is the message's length (2 bytes) then the message, padded
// with zeros to the shard length.
type Parity struct {
	Base  uint32
	K, M  uint8
	Index uint8
	Shard []byte
}

// AppendParity appends p to b.
func AppendParity(b []byte, p *Parity) ([]byte, error) {
	if p.K == 0 || p.K > MaxShards || p.M == 0 || p.M > MaxShards || p.Index >= p.M || len(p.Shard) < 2 {
		return b, ErrField
	}
	if len(p.Shard) > MaxShardLen {
		return b, ErrTooLong
	}
	b = binary.BigEndian.AppendUint32(b, p.Base)
	b = append(b, p.K, p.M, p.Index, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(p.Shard)))
	return append(b, p.Shard...), nil
}

// ParseParity reads a parity body; p.Shard points into b.
func ParseParity(b []byte, p *Parity) error {
	if len(b) < parityFixed {
		return ErrShort
	}
	p.Base = binary.BigEndian.Uint32(b)
	p.K, p.M, p.Index = b[4], b[5], b[6]
	n := int(binary.BigEndian.Uint16(b[8:]))
	if p.K == 0 || p.K > MaxShards || p.M == 0 || p.M > MaxShards || p.Index >= p.M || n < 2 || n > MaxShardLen {
		return ErrField
	}
	if len(b) != parityFixed+n {
		return ErrShort
	}
	p.Shard = b[parityFixed:]
	return nil
}

// AppendNack appends a NACK body naming seqs (at most MaxNack):
//
//	0-1    count n (1..MaxNack)
//	2..    n link sequences, 4 bytes each
func AppendNack(b []byte, seqs []uint32) ([]byte, error) {
	if len(seqs) == 0 {
		return b, ErrField
	}
	if len(seqs) > MaxNack {
		return b, ErrTooLong
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(seqs)))
	for _, s := range seqs {
		b = binary.BigEndian.AppendUint32(b, s)
	}
	return b, nil
}

// ParseNack reads a NACK body, appending its sequences to seqs[:0].
func ParseNack(b []byte, seqs []uint32) ([]uint32, error) {
	if len(b) < 2 {
		return seqs[:0], ErrShort
	}
	n := int(binary.BigEndian.Uint16(b))
	if n == 0 || n > MaxNack {
		return seqs[:0], ErrField
	}
	if len(b) != 2+4*n {
		return seqs[:0], ErrShort
	}
	seqs = seqs[:0]
	for i := 0; i < n; i++ {
		seqs = append(seqs, binary.BigEndian.Uint32(b[2+4*i:]))
	}
	return seqs, nil
}

// Probe asks the peer for an Echo:
//
//	0-3    probe id
//	4-11   the prober's send time (opaque to the peer, echoed back)
type Probe struct {
	ID   uint32
	Sent int64
}

// AppendProbe appends p to b.
func AppendProbe(b []byte, p Probe) []byte {
	b = binary.BigEndian.AppendUint32(b, p.ID)
	return binary.BigEndian.AppendUint64(b, uint64(p.Sent))
}

// ParseProbe reads a probe body.
func ParseProbe(b []byte) (Probe, error) {
	if len(b) != probeLen {
		return Probe{}, ErrShort
	}
	return Probe{ID: binary.BigEndian.Uint32(b), Sent: int64(binary.BigEndian.Uint64(b[4:]))}, nil
}

// Echo answers a probe and reports what the answering node measures of
// the link towards it:
//
//	0-3    probe id
//	4-11   the probe's send time, as received
//	12-15  loss of data messages from the prober to this node, in parts
//	       per million, before recovery (0..1e6)
type Echo struct {
	ID      uint32
	Sent    int64
	LossPPM uint32
}

// AppendEcho appends e to b.
func AppendEcho(b []byte, e Echo) []byte {
	b = binary.BigEndian.AppendUint32(b, e.ID)
	b = binary.BigEndian.AppendUint64(b, uint64(e.Sent))
	return binary.BigEndian.AppendUint32(b, e.LossPPM)
}

// ParseEcho reads an echo body.
func ParseEcho(b []byte) (Echo, error) {
	if len(b) != echoLen {
		return Echo{}, ErrShort
	}
	e := Echo{ID: binary.BigEndian.Uint32(b), Sent: int64(binary.BigEndian.Uint64(b[4:])), LossPPM: binary.BigEndian.Uint32(b[12:])}
	if e.LossPPM > 1e6 {
		return Echo{}, ErrField
	}
	return e, nil
}
