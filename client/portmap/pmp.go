package portmap

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// NAT-PMP wire constants (RFC 6886).
const (
	pmpVersion      = 0
	pmpOpExternal   = 0   // section 3.2
	pmpOpMapUDP     = 1   // section 3.3
	pmpResponseBit  = 128 // response opcode = 128 + request opcode
	pmpExternalLen  = 12
	pmpMapLen       = 16
	pmpMaxMessage   = 1100 // like PCP: the server shares the port
	pmpDefaultPort  = 5351
	upnpDefaultPort = 1900
)

var pmpResultText = map[int]string{
	1: "unsupported version", 2: "not authorized", 3: "network failure",
	4: "out of resources", 5: "unsupported opcode",
}

// PMPResponse is a parsed NAT-PMP response: an external address answer
// (section 3.2) or a UDP mapping answer (section 3.3).
type PMPResponse struct {
	Opcode byte // request opcode (without the 128 bit)
	Result uint16
	Epoch  uint32 // seconds since the router's mapping table was started
	// External address answer.
	ExternalAddr netip.Addr
	// Mapping answer.
	InternalPort uint16
	ExternalPort uint16
	Lifetime     uint32
}

// AppendPMPExternalRequest appends an external address request.
func AppendPMPExternalRequest(b []byte) []byte { return append(b, pmpVersion, pmpOpExternal) }

// AppendPMPMapRequest appends a UDP mapping request; lifetime 0 with
// external port 0 deletes the mapping (section 3.4).
func AppendPMPMapRequest(b []byte, internalPort, suggestedExternal uint16, lifetime uint32) []byte {
	b = append(b, pmpVersion, pmpOpMapUDP, 0, 0)
	b = binary.BigEndian.AppendUint16(b, internalPort)
	b = binary.BigEndian.AppendUint16(b, suggestedExternal)
	return binary.BigEndian.AppendUint32(b, lifetime)
}

// ParsePMPResponse parses a NAT-PMP response.
func ParsePMPResponse(b []byte) (PMPResponse, error) {
	var r PMPResponse
	if len(b) < 8 || len(b) > pmpMaxMessage {
		return r, fmt.Errorf("%w: nat-pmp: %d bytes", ErrMalformed, len(b))
	}
	if b[0] != pmpVersion {
		return r, fmt.Errorf("%w: nat-pmp: version %d", ErrMalformed, b[0])
	}
	if b[1] < pmpResponseBit {
		return r, fmt.Errorf("%w: nat-pmp: not a response", ErrMalformed)
	}
	r.Opcode = b[1] - pmpResponseBit
	r.Result = binary.BigEndian.Uint16(b[2:])
	r.Epoch = binary.BigEndian.Uint32(b[4:])
	switch r.Opcode {
	case pmpOpExternal:
		if len(b) < pmpExternalLen {
			if r.Result != 0 {
				return r, nil
			}
			return r, fmt.Errorf("%w: nat-pmp: short external address answer", ErrMalformed)
		}
		r.ExternalAddr = netip.AddrFrom4([4]byte(b[8:12]))
	case pmpOpMapUDP:
		if len(b) < pmpMapLen {
			if r.Result != 0 {
				return r, nil
			}
			return r, fmt.Errorf("%w: nat-pmp: short mapping answer", ErrMalformed)
		}
		r.InternalPort = binary.BigEndian.Uint16(b[8:])
		r.ExternalPort = binary.BigEndian.Uint16(b[10:])
		r.Lifetime = binary.BigEndian.Uint32(b[12:])
	default:
		return r, fmt.Errorf("%w: nat-pmp: opcode %d", ErrMalformed, r.Opcode)
	}
	return r, nil
}

func pmpError(code uint16) error { return resultError(PMP, int(code), pmpResultText) }
