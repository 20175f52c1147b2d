package portmap

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// PCP wire constants (RFC 6887).
const (
	pcpVersion       = 2    // section 7
	pcpOpAnnounce    = 0    // section 14.1
	pcpOpMap         = 1    // section 11
	pcpResponseBit   = 0x80 // section 7.1: R bit
	pcpHeaderLen     = 24   // section 7.1, 7.2
	pcpMapPayloadLen = 36   // section 11.1
	pcpMaxMessage    = 1100 // section 7: a PCP message is at most 1100 bytes
	protoUDP         = 17
)

// pcpResultText names PCP result codes (RFC 6887 section 7.4).
var pcpResultText = map[int]string{
	1: "UNSUPP_VERSION", 2: "NOT_AUTHORIZED", 3: "MALFORMED_REQUEST", 4: "UNSUPP_OPCODE",
	5: "UNSUPP_OPTION", 6: "MALFORMED_OPTION", 7: "NETWORK_FAILURE", 8: "NO_RESOURCES",
	9: "UNSUPP_PROTOCOL", 10: "USER_EX_QUOTA", 11: "CANNOT_PROVIDE_EXTERNAL",
	12: "ADDRESS_MISMATCH", 13: "EXCESSIVE_REMOTE_PEERS",
}

// PCPResponse is a parsed PCP response (RFC 6887 section 7.2), with the MAP
// payload (section 11.1) when the opcode is MAP.
type PCPResponse struct {
	Opcode   byte
	Result   byte
	Lifetime uint32 // seconds
	Epoch    uint32 // the server's epoch time (section 8.5)
	// MAP only.
	Nonce        [12]byte
	Protocol     byte
	InternalPort uint16
	External     netip.AddrPort
}

// appendPCPHeader appends a request header (section 7.1).
func appendPCPHeader(b []byte, op byte, lifetime uint32, client netip.Addr) []byte {
	b = append(b, pcpVersion, op, 0, 0)
	b = binary.BigEndian.AppendUint32(b, lifetime)
	a := client.As16() // IPv4 as ::ffff:a.b.c.d (section 5)
	return append(b, a[:]...)
}

// AppendPCPAnnounce appends a PCP ANNOUNCE request (section 14.1): the
// cheap "is anyone there" probe.
func AppendPCPAnnounce(b []byte, client netip.Addr) []byte {
	return appendPCPHeader(b, pcpOpAnnounce, 0, client)
}

// AppendPCPMap appends a PCP MAP request for UDP (section 11.1) from client
// (the sender's own address: section 8.1 makes the server check it),
// asking for internalPort to be reachable on suggested (any port or
// address when zero) for lifetime seconds; lifetime 0 deletes the
// mapping (section 15).
func AppendPCPMap(b []byte, nonce [12]byte, client netip.Addr, internalPort uint16, suggested netip.AddrPort, lifetime uint32) []byte {
	b = appendPCPHeader(b, pcpOpMap, lifetime, client)
	b = append(b, nonce[:]...)
	b = append(b, protoUDP, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, internalPort)
	b = binary.BigEndian.AppendUint16(b, suggested.Port())
	ext := netip.IPv6Unspecified().As16()
	if suggested.Addr().Is4() {
		ext = suggested.Addr().As16()
	} else if !suggested.Addr().IsValid() {
		// ::ffff:0.0.0.0, "any IPv4 address" (section 11.1).
		ext = netip.AddrFrom4([4]byte{}).As16()
	}
	return append(b, ext[:]...)
}

// ParsePCPResponse parses a PCP response. Options after the payload are
// skipped (none is required of a client by section 7.3). A response whose
// result code is not SUCCESS still parses: Result says which; the MAP
// payload is then only as trustworthy as the server.
func ParsePCPResponse(b []byte) (PCPResponse, error) {
	var r PCPResponse
	if len(b) < pcpHeaderLen || len(b) > pcpMaxMessage || len(b)%4 != 0 {
		return r, fmt.Errorf("%w: pcp: %d bytes", ErrMalformed, len(b))
	}
	if b[0] != pcpVersion {
		return r, fmt.Errorf("%w: pcp: version %d", ErrMalformed, b[0])
	}
	if b[1]&pcpResponseBit == 0 {
		return r, fmt.Errorf("%w: pcp: not a response", ErrMalformed)
	}
	r.Opcode = b[1] &^ pcpResponseBit
	r.Result = b[3]
	r.Lifetime = binary.BigEndian.Uint32(b[4:])
	r.Epoch = binary.BigEndian.Uint32(b[8:])
	if r.Opcode != pcpOpMap {
		return r, nil
	}
	if len(b) < pcpHeaderLen+pcpMapPayloadLen {
		if r.Result != 0 {
			return r, nil // an error answer may come without the payload
		}
		return r, fmt.Errorf("%w: pcp: short MAP payload", ErrMalformed)
	}
	p := b[pcpHeaderLen:]
	copy(r.Nonce[:], p[:12])
	r.Protocol = p[12]
	r.InternalPort = binary.BigEndian.Uint16(p[16:])
	port := binary.BigEndian.Uint16(p[18:])
	addr := netip.AddrFrom16([16]byte(p[20:36])).Unmap()
	r.External = netip.AddrPortFrom(addr, port)
	return r, nil
}

func pcpError(code byte) error { return resultError(PCP, int(code), pcpResultText) }
