package kfasttest

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// Packet describes an Ethernet + IPv4 + UDP frame for the tc programs'
// BPF_PROG_TEST_RUN tests. Zero fields take defaults: TTL 64, protocol
// UDP, IHL 5, ethertype IPv4.
type Packet struct {
	Src, Dst  netip.AddrPort
	Proto     byte
	TTL       byte
	IHL       byte // 32-bit words; 5 without options
	FragOff   uint16
	NoCsum    bool // UDP checksum 0
	EthType   uint16
	Payload   []byte
	Truncate  int // bytes cut from the end (0: none)
	TotLenAdd int // added to the IP total length field
	UDPLenAdd int // added to the UDP length field
}

// Bytes builds the frame with valid checksums (unless told otherwise).
func (p Packet) Bytes() []byte {
	if p.TTL == 0 {
		p.TTL = 64
	}
	if p.Proto == 0 {
		p.Proto = 17
	}
	if p.IHL == 0 {
		p.IHL = 5
	}
	if p.EthType == 0 {
		p.EthType = 0x0800
	}
	b := make([]byte, 14, 100+len(p.Payload))
	copy(b[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(b[6:12], []byte{2, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(b[12:], p.EthType)
	hl := int(p.IHL) * 4
	ip := make([]byte, hl)
	ip[0] = 0x40 | p.IHL
	tot := hl + 8 + len(p.Payload)
	binary.BigEndian.PutUint16(ip[2:], uint16(tot+p.TotLenAdd))
	binary.BigEndian.PutUint16(ip[4:], 0x1234)
	binary.BigEndian.PutUint16(ip[6:], p.FragOff)
	ip[8], ip[9] = p.TTL, p.Proto
	s, d := p.Src.Addr().As4(), p.Dst.Addr().As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], ^Fold(Sum(0, ip)))
	udp := make([]byte, 8, 8+len(p.Payload))
	binary.BigEndian.PutUint16(udp[0:], p.Src.Port())
	binary.BigEndian.PutUint16(udp[2:], p.Dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(p.Payload)+p.UDPLenAdd))
	udp = append(udp, p.Payload...)
	if !p.NoCsum {
		binary.BigEndian.PutUint16(udp[6:], UDPChecksum(ip, udp))
	}
	b = append(append(b, ip...), udp...)
	return b[:len(b)-p.Truncate]
}

// Sum adds b to the one's complement sum s as 16-bit big-endian words
// (an odd last byte padded with zero).
func Sum(s uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

// Fold folds a sum to 16 bits.
func Fold(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// UDPChecksum computes the UDP checksum of udp (its checksum field taken
// as zero) under the IPv4 header ip's pseudo-header (RFC 768); 0 comes out
// as 0xffff.
func UDPChecksum(ip, udp []byte) uint16 {
	c := make([]byte, len(udp))
	copy(c, udp)
	c[6], c[7] = 0, 0
	s := Sum(0, ip[12:20])
	s += 17 + uint32(len(udp))
	s = Sum(s, c)
	r := ^Fold(s)
	if r == 0 {
		r = 0xffff
	}
	return r
}

// RandomAddrPort draws an IPv4 address and port from r, neither of them
// zero (the programs' maps treat zero as unset), for the random checksum
// tests.
func RandomAddrPort(r *rand.Rand) netip.AddrPort {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], r.Uint32()|1)
	return netip.AddrPortFrom(netip.AddrFrom4(a), uint16(r.Uint32()|1))
}

// Tuple returns the source and destination of an Ethernet + IPv4 (no
// options) + UDP frame of at least 38 bytes.
func Tuple(frame []byte) (src, dst netip.AddrPort) {
	ip, udp := frame[14:34], frame[34:]
	src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), binary.BigEndian.Uint16(udp[0:]))
	dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), binary.BigEndian.Uint16(udp[2:]))
	return src, dst
}

// CheckHeaders checks the headers of a frame a tc program rewrote
// (Ethernet + IPv4 without options + UDP): its source is src and its
// destination dst, the IP header checksum verifies, and the UDP checksum
// equals one recomputed from scratch (or stays 0 when zeroCsum: a sender
// that sent none).
func CheckHeaders(t testing.TB, frame []byte, src, dst netip.AddrPort, zeroCsum bool) {
	t.Helper()
	ip, udp := frame[14:34], frame[34:]
	gotSrc, gotDst := Tuple(frame)
	if gotSrc != src {
		t.Errorf("source %v, want %v", gotSrc, src)
	}
	if gotDst != dst {
		t.Errorf("destination %v, want %v", gotDst, dst)
	}
	if Fold(Sum(0, ip)) != 0xffff {
		t.Errorf("IP header checksum %#04x does not verify", binary.BigEndian.Uint16(ip[10:]))
	}
	got := binary.BigEndian.Uint16(udp[6:])
	if zeroCsum {
		if got != 0 {
			t.Errorf("UDP checksum %#04x, want 0 kept", got)
		}
	} else if want := UDPChecksum(ip, udp); got != want {
		t.Errorf("UDP checksum %#04x, want %#04x", got, want)
	}
}

// RandomPayload draws a payload of 0 to max-1 random bytes from r.
func RandomPayload(r *rand.Rand, max int) []byte {
	b := make([]byte, r.IntN(max))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}
