package turn

import (
	"encoding/binary"
	"net/netip"
)

// Wire constants of RFC 8489 and RFC 8656.
const (
	stunHeaderSize = 20
	magicCookie    = 0x2112A442

	// Channel numbers 0x4000-0x4FFF are valid (RFC 8656 section 12);
	// RFC 5766 allowed up to 0x7FFE and older clients still use them, so
	// the server accepts the whole range the ChannelData first byte can
	// carry.
	minChannel = 0x4000
	maxChannel = 0x7FFE

	typeSendIndication = 0x0016 // Send indication (method 0x006, class indication)
	typeDataIndication = 0x0017 // Data indication (method 0x007, class indication)
	attrXORPeerAddress = 0x0012
	attrData           = 0x0013

	// headroom is the space kept in front of a relayed payload for the
	// largest header the server writes there: a Data indication to an IPv6
	// peer (20 + 4+20 + 4).
	headroom = 48
)

// isChannelData reports whether b starts like a ChannelData message (first
// two bits 01, RFC 8656 section 12.4).
func isChannelData(b []byte) bool { return len(b) >= 4 && b[0]&0xC0 == 0x40 }

// parseChannelData returns the channel number and payload of a ChannelData
// message (RFC 8656 section 12.4). Trailing bytes (padding) are ignored.
func parseChannelData(b []byte) (uint16, []byte, error) {
	if len(b) < 4 {
		return 0, nil, ErrMalformed
	}
	num := binary.BigEndian.Uint16(b)
	if num < minChannel || num > maxChannel {
		return 0, nil, ErrMalformed
	}
	n := int(binary.BigEndian.Uint16(b[2:]))
	if 4+n > len(b) {
		return 0, nil, ErrMalformed
	}
	return num, b[4 : 4+n], nil
}

// appendChannelData appends a ChannelData message, padded to four bytes
// when pad is set (as stream transports require, RFC 8656 section 12.5).
func appendChannelData(b []byte, num uint16, data []byte, pad bool) []byte {
	b = binary.BigEndian.AppendUint16(b, num)
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	b = append(b, data...)
	if pad {
		for i := len(data); i%4 != 0; i++ {
			b = append(b, 0)
		}
	}
	return b
}

// streamFrameLen returns the length of the frame that starts b on a stream
// transport (TCP, TLS): a STUN message or a padded ChannelData message. It
// needs the first four bytes; ok is false for a first byte that starts
// neither.
func streamFrameLen(b []byte) (n int, channel bool, ok bool) {
	if len(b) < 4 {
		return 0, false, false
	}
	l := int(binary.BigEndian.Uint16(b[2:]))
	switch b[0] >> 6 {
	case 0:
		if l%4 != 0 {
			return 0, false, false
		}
		return stunHeaderSize + l, false, true
	case 1:
		return 4 + (l+3)&^3, true, true
	}
	return 0, false, false
}

// parseSendIndication extracts XOR-PEER-ADDRESS and DATA from a Send
// indication (RFC 8656 section 11.4) without allocating. It does not check
// the message type.
func parseSendIndication(b []byte) (netip.AddrPort, []byte, error) {
	if len(b) < stunHeaderSize || binary.BigEndian.Uint32(b[4:]) != magicCookie {
		return netip.AddrPort{}, nil, ErrMalformed
	}
	l := int(binary.BigEndian.Uint16(b[2:]))
	if stunHeaderSize+l > len(b) {
		return netip.AddrPort{}, nil, ErrMalformed
	}
	tid := b[8:20]
	attrs := b[stunHeaderSize : stunHeaderSize+l]
	var peer netip.AddrPort
	var data []byte
	var haveData bool
	for len(attrs) >= 4 {
		t := binary.BigEndian.Uint16(attrs)
		al := int(binary.BigEndian.Uint16(attrs[2:]))
		if 4+al > len(attrs) {
			return netip.AddrPort{}, nil, ErrMalformed
		}
		v := attrs[4 : 4+al]
		switch t {
		case attrXORPeerAddress:
			if !peer.IsValid() {
				p, err := parseXORAddress(v, tid)
				if err != nil {
					return netip.AddrPort{}, nil, err
				}
				peer = p
			}
		case attrData:
			if !haveData {
				data, haveData = v, true
			}
		}
		pl := 4 + (al+3)&^3
		if pl > len(attrs) {
			break
		}
		attrs = attrs[pl:]
	}
	if !peer.IsValid() || !haveData {
		return netip.AddrPort{}, nil, ErrMalformed
	}
	return peer, data, nil
}

// parseXORAddress decodes an XOR-*-ADDRESS value (RFC 8489 section 14.2).
func parseXORAddress(v, tid []byte) (netip.AddrPort, error) {
	if len(v) < 4 {
		return netip.AddrPort{}, ErrMalformed
	}
	port := binary.BigEndian.Uint16(v[2:]) ^ (magicCookie >> 16)
	switch v[1] {
	case 1:
		if len(v) != 8 {
			return netip.AddrPort{}, ErrMalformed
		}
		x := binary.BigEndian.Uint32(v[4:]) ^ magicCookie
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], x)
		return netip.AddrPortFrom(netip.AddrFrom4(a), port), nil
	case 2:
		if len(v) != 20 || len(tid) != 12 {
			return netip.AddrPort{}, ErrMalformed
		}
		var a [16]byte
		binary.BigEndian.PutUint32(a[:], magicCookie)
		copy(a[4:], tid)
		for i := range a {
			a[i] ^= v[4+i]
		}
		return netip.AddrPortFrom(netip.AddrFrom16(a).Unmap(), port), nil
	}
	return netip.AddrPort{}, ErrMalformed
}

// putDataIndication writes a Data indication header (RFC 8656 section
// 11.5) for a payload of n bytes from peer into buf, ending exactly at
// buf[headroom], and zero padding after the payload (buf must hold
// headroom+n+3 bytes). It returns where the message starts and its length.
func putDataIndication(buf []byte, n int, peer netip.AddrPort, tid *[12]byte) (start, length int) {
	addrLen := 8
	if peer.Addr().Is6() {
		addrLen = 20
	}
	hdr := stunHeaderSize + 4 + addrLen + 4
	start = headroom - hdr
	b := buf[start:headroom]
	pad := (4 - n%4) % 4
	binary.BigEndian.PutUint16(b[0:], typeDataIndication)
	binary.BigEndian.PutUint16(b[2:], uint16(4+addrLen+4+n+pad))
	binary.BigEndian.PutUint32(b[4:], magicCookie)
	copy(b[8:20], tid[:])
	binary.BigEndian.PutUint16(b[20:], attrXORPeerAddress)
	binary.BigEndian.PutUint16(b[22:], uint16(addrLen))
	b[24] = 0
	port := peer.Port() ^ (magicCookie >> 16)
	binary.BigEndian.PutUint16(b[26:], port)
	if addrLen == 8 {
		a := peer.Addr().As4()
		binary.BigEndian.PutUint32(b[28:], binary.BigEndian.Uint32(a[:])^magicCookie)
		b[25] = 1
	} else {
		b[25] = 2
		a := peer.Addr().As16()
		var x [16]byte
		binary.BigEndian.PutUint32(x[:], magicCookie)
		copy(x[4:], tid[:])
		for i := range a {
			b[28+i] = a[i] ^ x[i]
		}
	}
	d := b[24+addrLen:]
	binary.BigEndian.PutUint16(d[0:], attrData)
	binary.BigEndian.PutUint16(d[2:], uint16(n))
	for i := 0; i < pad; i++ {
		buf[headroom+n+i] = 0
	}
	return start, hdr + n + pad
}
