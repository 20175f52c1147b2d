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
