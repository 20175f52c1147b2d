package stun

import (
	"encoding/binary"
	"hash/crc32"
	"net/netip"

	"github.com/pion/stun/v3"
)

const (
	magicCookie    = 0x2112A442 // RFC 8489 section 5
	headerSize     = 20
	fingerprintXOR = 0x5354554e // RFC 8489 section 14.7
	// maxAttrs bounds the attributes of one request: a flood of tiny
	// attributes is dropped before the codec walks it.
	maxAttrs = 64
	// maxRequest is the largest request read (UDP buffer, TCP frame).
	maxRequest = 2048

	// RFC 5780 section 7.2: CHANGE-REQUEST flags.
	changeIP   = 0x4
	changePort = 0x2
)

// transport is how a request arrived.
type transport uint8

const (
	udp transport = iota
	tcp
	tlsT
	numTransports
)

var transportNames = [numTransports]string{"udp", "tcp", "tls"}

// reason says why a datagram was dropped.
type reason uint8

const (
	dropNone reason = iota
	dropShort
	dropNotSTUN
	dropBadCookie
	dropBadLength
	dropBadAttribute
	dropAttributeFlood
	dropBadFingerprint
	dropNotRequest
	dropOversize
	dropRateLimited // over the source's answer rate (Config.Rate)
	numReasons
)

var reasonNames = [numReasons]string{"", "short", "not_stun", "bad_cookie", "bad_length", "bad_attribute",
	"attribute_flood", "bad_fingerprint", "not_request", "oversize", "rate_limited"}

// endpoints are the server's UDP socket addresses. Index bit 0 selects the
// other IP and bit 1 the other port (RFC 5780 section 6.1), so a
// CHANGE-REQUEST turns into an index XOR and OTHER-ADDRESS is index ^ 3.
type endpoints struct {
	addrs   [4]netip.AddrPort
	rfc5780 bool
}

// result is what handle decided for one request.
type result struct {
	out  []byte // the response, appended into the caller's buffer
	from int    // index of the socket that sends it
	dst  netip.AddrPort
	drop reason // dropNone when out is to be sent
	err  bool   // out is an error response
}

// handler answers Binding requests. It owns reused messages and scratch
// space, so one handler serves one goroutine.
type handler struct {
	ep       endpoints
	software []byte
	req      stun.Message
	resp     stun.Message
	av       [28]byte
	unknown  [2 * maxAttrs]byte
}

var zeros [maxRequest]byte

var (
	reasonBadRequest = []byte("Bad Request")
	reasonUnknown    = []byte("Unknown Attribute")
)

func newHandler(ep endpoints, software string) *handler {
	h := &handler{ep: ep, software: []byte(software)}
	h.req.Attributes = make(stun.Attributes, 0, maxAttrs)
	h.resp.Attributes = make(stun.Attributes, 0, 16)
	return h
}

// check validates the framing of in without the codec: header, length,
// attribute TLVs and, when present, FINGERPRINT (which must come last and
// match). Hostile input is rejected here without allocating.
func check(in []byte) reason {
	if len(in) < headerSize {
		return dropShort
	}
	if in[0]&0xC0 != 0 {
		return dropNotSTUN
	}
	if binary.BigEndian.Uint32(in[4:8]) != magicCookie {
		return dropBadCookie
	}
	if len(in) > maxRequest {
		return dropOversize
	}
	l := int(binary.BigEndian.Uint16(in[2:4]))
	if l%4 != 0 || headerSize+l != len(in) {
		return dropBadLength
	}
	n := 0
	for off := headerSize; off < len(in); {
		if len(in)-off < 4 {
			return dropBadAttribute
		}
		t := binary.BigEndian.Uint16(in[off:])
		al := int(binary.BigEndian.Uint16(in[off+2:]))
		end := off + 4 + (al+3)&^3
		if end > len(in) {
			return dropBadAttribute
		}
		if n++; n > maxAttrs {
			return dropAttributeFlood
		}
		if t == uint16(stun.AttrFingerprint) {
			if end != len(in) || al != 4 {
				return dropBadFingerprint
			}
			if crc32.ChecksumIEEE(in[:off])^fingerprintXOR != binary.BigEndian.Uint32(in[off+4:]) {
				return dropBadFingerprint
			}
		}
		off = end
	}
	return dropNone
}

// knownRequired reports whether t is a comprehension-required attribute
// (below 0x8000) that a Binding request may carry and this server may
// ignore: credentials are not used by a public STUN server, ICE's
// attributes matter only to ICE agents.
func knownRequired(t stun.AttrType) bool {
	switch t {
	case stun.AttrMappedAddress, stun.AttrUsername, stun.AttrMessageIntegrity, stun.AttrErrorCode,
		stun.AttrUnknownAttributes, stun.AttrRealm, stun.AttrNonce, stun.AttrXORMappedAddress,
		stun.AttrMessageIntegritySHA256, stun.AttrUserhash, stun.AttrPriority, stun.AttrUseCandidate,
		stun.AttrPadding, stun.AttrResponsePort:
		return true
	}
	return false
}

// handle answers one request that arrived on socket via from src over t.
// The response is appended to out[:0]; it never outgrows cap(out) when
// cap(out) >= maxRequest.
//
// It stays one function of about 110 lines on purpose: it is the answer
// path of every request, and split into an attribute reader and a
// response writer (tried for issue 16) BenchmarkHandle went from 97 to
// 125 ns per request on 2 vCPUs.
func (h *handler) handle(in []byte, src netip.AddrPort, via int, t transport, out []byte) result {
	if r := check(in); r != dropNone {
		return result{drop: r}
	}
	req := &h.req
	req.Raw = in
	if err := req.Decode(); err != nil {
		return result{drop: dropBadAttribute}
	}
	if req.Type.Class != stun.ClassRequest {
		return result{drop: dropNotRequest}
	}
	if req.Type.Method != stun.MethodBinding {
		return h.errorResponse(src, via, out, 400, reasonBadRequest, 0, false)
	}
	var (
		flags    uint32
		respPort = -1
		padLen   = -1
		bad      bool
		fp       bool
		unknown  int
	)
	for _, a := range req.Attributes {
		switch {
		case a.Type == stun.AttrChangeRequest && h.ep.rfc5780:
			if len(a.Value) != 4 {
				bad = true
				continue
			}
			flags = binary.BigEndian.Uint32(a.Value) & (changeIP | changePort)
		case a.Type == stun.AttrResponsePort:
			if len(a.Value) < 2 {
				bad = true
				continue
			}
			respPort = int(binary.BigEndian.Uint16(a.Value))
		case a.Type == stun.AttrPadding:
			padLen = len(a.Value)
		case a.Type == stun.AttrFingerprint:
			fp = true
		case uint16(a.Type) < 0x8000 && !knownRequired(a.Type):
			if 2*unknown < len(h.unknown) {
				binary.BigEndian.PutUint16(h.unknown[2*unknown:], uint16(a.Type))
				unknown++
			}
		}
	}
	if unknown > 0 {
		return h.errorResponse(src, via, out, 420, reasonUnknown, unknown, fp)
	}
	// RFC 5780 section 6.1: CHANGE-REQUEST and RESPONSE-PORT make sense
	// over UDP only; PADDING is ignored over a stream.
	if t != udp && (flags != 0 || respPort >= 0) {
		bad = true
	}
	if bad || respPort == 0 {
		return h.errorResponse(src, via, out, 400, reasonBadRequest, 0, fp)
	}
	from := via
	if flags&changeIP != 0 {
		from ^= 1
	}
	if flags&changePort != 0 {
		from ^= 2
	}
	dst := src
	if respPort > 0 {
		dst = netip.AddrPortFrom(src.Addr(), uint16(respPort))
	}

	resp := &h.resp
	resp.Raw = out[:0]
	resp.Reset()
	resp.Type = stun.BindingSuccess
	resp.TransactionID = req.TransactionID
	resp.WriteHeader()
	// What an answer carries decides how much an unauthenticated source
	// spoofing a victim's address can reflect at it: XOR-MAPPED-ADDRESS
	// alone is 32 bytes for a 20-byte request (1.6x; 2.8x with the RFC
	// 5780 attributes; 4.4x when every answer carried SOFTWARE,
	// FINGERPRINT, MAPPED-ADDRESS and the RFC 5780 attributes).
	// The RFC 5780 attributes come only from an RFC 5780 server, over UDP
	// (section 6.1); SOFTWARE only when configured; FINGERPRINT only when
	// the request carried one (RFC 8489 section 14.7 makes it optional).
	h.addAddr(stun.AttrXORMappedAddress, src, true)
	if t == udp && h.ep.rfc5780 {
		// MAPPED-ADDRESS is not needed: clients of the RFC 3489
		// lineage send no magic cookie and are dropped, and coturn's
		// turnutils_natdiscovery reads XOR-MAPPED-ADDRESS
		// (TestInteropCoturnNatdiscovery).
		h.addAddr(stun.AttrResponseOrigin, h.ep.addrs[from], false)
		h.addAddr(stun.AttrOtherAddress, h.ep.addrs[via^3], false)
	}
	if len(h.software) > 0 {
		resp.Add(stun.AttrSoftware, h.software)
	}
	if padLen >= 0 && t == udp && h.ep.rfc5780 {
		// RFC 5780 section 7.6: pad the response like the request, as
		// far as the buffer allows. The request carries the same bytes,
		// so this amplifies nothing.
		room := cap(out) - len(resp.Raw) - 4 - 8 - 3
		resp.Add(stun.AttrPadding, zeros[:max(0, min(padLen, room, len(zeros)))])
	}
	if fp {
		h.addFingerprint()
	}
	return result{out: resp.Raw, from: from, dst: dst}
}

func (h *handler) errorResponse(src netip.AddrPort, via int, out []byte, code int, phrase []byte, unknown int, fp bool) result {
	resp := &h.resp
	resp.Raw = out[:0]
	resp.Reset()
	resp.Type = stun.NewType(h.req.Type.Method, stun.ClassErrorResponse)
	resp.TransactionID = h.req.TransactionID
	resp.WriteHeader()
	v := h.av[:4]
	v[0], v[1], v[2], v[3] = 0, 0, byte(code/100), byte(code%100)
	n := copy(h.av[4:], phrase)
	resp.Add(stun.AttrErrorCode, h.av[:4+n])
	if unknown > 0 {
		resp.Add(stun.AttrUnknownAttributes, h.unknown[:2*unknown])
	}
	if len(h.software) > 0 {
		resp.Add(stun.AttrSoftware, h.software)
	}
	if fp {
		h.addFingerprint()
	}
	return result{out: resp.Raw, from: via, dst: src, err: true}
}

// addAddr appends an address attribute, XOR-encoded (RFC 8489 section
// 14.2) or plain (14.1, the format of RESPONSE-ORIGIN and OTHER-ADDRESS).
func (h *handler) addAddr(t stun.AttrType, a netip.AddrPort, xor bool) {
	v := h.av[:]
	ip := a.Addr().Unmap()
	port := a.Port()
	v[0] = 0
	n := 8
	if ip.Is4() {
		v[1] = 0x01
		b := ip.As4()
		copy(v[4:8], b[:])
	} else {
		v[1] = 0x02
		b := ip.As16()
		copy(v[4:20], b[:])
		n = 20
	}
	if xor {
		port ^= magicCookie >> 16
		var k [16]byte
		binary.BigEndian.PutUint32(k[:4], magicCookie)
		copy(k[4:], h.resp.TransactionID[:])
		for i := 4; i < n; i++ {
			v[i] ^= k[i-4]
		}
	}
	binary.BigEndian.PutUint16(v[2:4], port)
	h.resp.Add(t, v[:n])
}

// addFingerprint appends FINGERPRINT (RFC 8489 section 14.7), computed over
// the message whose length already counts the attribute.
func (h *handler) addFingerprint() {
	resp := &h.resp
	resp.Length += 8
	resp.WriteLength()
	binary.BigEndian.PutUint32(h.av[:4], crc32.ChecksumIEEE(resp.Raw)^fingerprintXOR)
	resp.Length -= 8
	resp.Add(stun.AttrFingerprint, h.av[:4])
}
