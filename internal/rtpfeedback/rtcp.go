package rtpfeedback

import (
	"encoding/binary"

	"github.com/pion/rtcp"
)

// srMinLen is the length of a sender report without report blocks:
// header, sender SSRC, NTP time, RTP time, packet and octet counts (RFC
// 3550 section 6.4.1).
const srMinLen = 28

// nextSenderReport scans a compound RTCP packet (RFC 3550 section 6.1)
// for its next sender report without allocating: it returns the SR's
// sender SSRC and NTP timestamp and the rest of the compound packet to
// scan next, or ok false when no SR is left. A header that overruns the
// packet or has the wrong version ends the scan with an error.
func nextSenderReport(b []byte) (ssrc uint32, ntp uint64, rest []byte, ok bool, err error) {
	for len(b) > 0 {
		var h rtcp.Header
		if len(b) < 4 {
			return 0, 0, nil, false, ErrShortRTCP
		}
		if b[0]>>6 != 2 { // RFC 3550 section 6.4.1
			return 0, 0, nil, false, ErrRTCPVersion
		}
		if err := h.Unmarshal(b[:4]); err != nil {
			return 0, 0, nil, false, err
		}
		n := (int(h.Length) + 1) * 4
		if n > len(b) {
			return 0, 0, nil, false, ErrShortRTCP
		}
		p := b[:n]
		b = b[n:]
		if h.Type == rtcp.TypeSenderReport && len(p) >= srMinLen {
			return binary.BigEndian.Uint32(p[4:8]), binary.BigEndian.Uint64(p[8:16]), b, true, nil
		}
	}
	return 0, 0, nil, false, nil
}

// appendPacket appends p as pion's Marshal would, without allocating,
// for the kinds the Interceptor sends most: receiver reports (RFC 3550
// section 6.4.2) without profile extensions, and generic NACKs (RFC 4585
// section 6.2.1). ok false leaves p to its Marshal: another kind, or
// values pion refuses (more than 31 report blocks, a cumulative loss past
// its 2^25 check, a NACK too long for its limit).
func appendPacket(b []byte, p rtcp.Packet) (out []byte, ok bool) {
	switch p := p.(type) {
	case *rtcp.ReceiverReport:
		if len(p.Reports) > 31 || len(p.ProfileExtensions) > 0 {
			return b, false
		}
		for _, r := range p.Reports {
			if r.TotalLost >= 1<<25 {
				return b, false
			}
		}
		b = appendHeader(b, uint8(len(p.Reports)), rtcp.TypeReceiverReport, 1+6*len(p.Reports))
		b = binary.BigEndian.AppendUint32(b, p.SSRC)
		for _, r := range p.Reports {
			b = binary.BigEndian.AppendUint32(b, r.SSRC)
			// Fraction lost, then the cumulative loss in 24 bits.
			b = binary.BigEndian.AppendUint32(b, uint32(r.FractionLost)<<24|r.TotalLost&0xffffff)
			b = binary.BigEndian.AppendUint32(b, r.LastSequenceNumber)
			b = binary.BigEndian.AppendUint32(b, r.Jitter)
			b = binary.BigEndian.AppendUint32(b, r.LastSenderReport)
			b = binary.BigEndian.AppendUint32(b, r.Delay)
		}
		return b, true
	case *rtcp.TransportLayerNack:
		if len(p.Nacks)+2 > 255 { // pion's limit
			return b, false
		}
		b = appendHeader(b, rtcp.FormatTLN, rtcp.TypeTransportSpecificFeedback, 2+len(p.Nacks))
		b = binary.BigEndian.AppendUint32(b, p.SenderSSRC)
		b = binary.BigEndian.AppendUint32(b, p.MediaSSRC)
		for _, n := range p.Nacks {
			b = binary.BigEndian.AppendUint16(b, n.PacketID)
			b = binary.BigEndian.AppendUint16(b, uint16(n.LostPackets))
		}
		return b, true
	}
	return b, false
}

// appendHeader appends an RTCP header (RFC 3550 section 6.4.1): version 2,
// no padding, count, type, and the length in 32-bit words after the
// header.
func appendHeader(b []byte, count uint8, typ rtcp.PacketType, words int) []byte {
	return append(b, 2<<6|count, uint8(typ), byte(words>>8), byte(words))
}
