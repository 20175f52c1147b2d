package signal

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/pion/sdp/v3"
)

// ParsedCandidate holds the fields of an ICE candidate attribute value that
// signaling looks at (RFC 8839 section 5.1):
//
//	candidate:FOUNDATION COMPONENT TRANSPORT PRIORITY ADDRESS PORT typ TYPE [extensions]
type ParsedCandidate struct {
	Foundation string
	Component  uint16
	Transport  string // "udp" or "tcp", lower case
	Priority   uint32
	Address    string // an IP address, or an mDNS name (RFC 8839 section 5.1, draft-ietf-mmusic-mdns-ice-candidates)
	Port       uint16
	Type       string // host, srflx, prflx or relay
}

// ParseCandidate parses a candidate attribute value, with or without the
// "candidate:" prefix. Errors wrap ErrMessage.
func ParseCandidate(s string) (ParsedCandidate, error) {
	var c ParsedCandidate
	s = strings.TrimPrefix(strings.TrimPrefix(s, "a="), "candidate:")
	f := strings.Fields(s)
	if len(f) < 8 || f[6] != "typ" {
		return c, fmt.Errorf("%w: candidate: want 8 fields with typ", ErrMessage)
	}
	if len(f[0]) == 0 || len(f[0]) > 32 {
		return c, fmt.Errorf("%w: candidate: foundation", ErrMessage)
	}
	c.Foundation = f[0]
	comp, err := strconv.ParseUint(f[1], 10, 16)
	if err != nil || comp < 1 || comp > 256 {
		return c, fmt.Errorf("%w: candidate: component %.16q", ErrMessage, f[1])
	}
	c.Component = uint16(comp)
	c.Transport = strings.ToLower(f[2])
	if c.Transport != "udp" && c.Transport != "tcp" {
		return c, fmt.Errorf("%w: candidate: transport %.16q", ErrMessage, f[2])
	}
	prio, err := strconv.ParseUint(f[3], 10, 32)
	if err != nil {
		return c, fmt.Errorf("%w: candidate: priority %.16q", ErrMessage, f[3])
	}
	c.Priority = uint32(prio)
	if len(f[4]) > 255 {
		return c, fmt.Errorf("%w: candidate: address too long", ErrMessage)
	}
	if _, err := netip.ParseAddr(f[4]); err != nil && !strings.HasSuffix(f[4], ".local") {
		return c, fmt.Errorf("%w: candidate: address %.64q", ErrMessage, f[4])
	}
	c.Address = f[4]
	port, err := strconv.ParseUint(f[5], 10, 16)
	if err != nil {
		return c, fmt.Errorf("%w: candidate: port %.16q", ErrMessage, f[5])
	}
	c.Port = uint16(port)
	switch f[7] {
	case "host", "srflx", "prflx", "relay":
		c.Type = f[7]
	default:
		return c, fmt.Errorf("%w: candidate: type %.16q", ErrMessage, f[7])
	}
	return c, nil
}

// rewriteCandidate replaces the address of a host candidate with public
// when public is valid and of the same family as the candidate's address (or
// the candidate's address is unspecified). It returns s unchanged otherwise.
// An SFU behind 1:1 NAT or a load balancer gathers its private address; the
// client must be told the address its packets reach the node on.
func rewriteCandidate(s string, public netip.Addr) string {
	if !public.IsValid() {
		return s
	}
	prefix := ""
	body := s
	if strings.HasPrefix(body, "candidate:") {
		prefix, body = "candidate:", body[len("candidate:"):]
	}
	f := strings.Fields(body)
	if len(f) < 8 || f[6] != "typ" || f[7] != "host" {
		return s
	}
	a, err := netip.ParseAddr(f[4])
	if err != nil || (a.Is4() != public.Is4() && !a.IsUnspecified()) {
		return s
	}
	f[4] = public.String()
	return prefix + strings.Join(f, " ")
}

// Offer is what signaling learns from a client's offer.
type Offer struct {
	// Ufrag is the client's ICE username fragment (RFC 8839 section 5.4):
	// the SFU maps the first STUN binding request carrying it to the
	// session, and from then the request's source address.
	Ufrag string
	// Sends says some audio or video section is sendonly or sendrecv.
	Sends bool
	// Media counts the m= sections.
	Media int
}

// ParseOffer parses and checks a client's SDP offer or answer: it must be
// SDP (RFC 8866), carry ICE credentials (RFC 8839) and a DTLS fingerprint
// (RFC 8122) for every section, and have at least one m= section. Errors
// wrap ErrSDP.
func ParseOffer(body string) (Offer, error) {
	var o Offer
	if len(body) > maxSDPLen {
		return o, fmt.Errorf("%w: longer than %d bytes", ErrSDP, maxSDPLen)
	}
	var sd sdp.SessionDescription
	if err := sd.UnmarshalString(body); err != nil {
		return o, fmt.Errorf("%w: %w", ErrSDP, err)
	}
	if len(sd.MediaDescriptions) == 0 {
		return o, fmt.Errorf("%w: no media section", ErrSDP)
	}
	sessUfrag, _ := sd.Attribute("ice-ufrag")
	sessPwd, _ := sd.Attribute("ice-pwd")
	_, sessFP := sd.Attribute("fingerprint")
	for i, md := range sd.MediaDescriptions {
		if md.MediaName.Port.Value == 0 {
			// A rejected or stopped section (RFC 8843 section 7.3.3 for
			// bundle-only sections) carries no transport to check.
			continue
		}
		ufrag, ok := md.Attribute("ice-ufrag")
		if !ok {
			ufrag = sessUfrag
		}
		pwd, ok := md.Attribute("ice-pwd")
		if !ok {
			pwd = sessPwd
		}
		if ufrag == "" || pwd == "" {
			return o, fmt.Errorf("%w: m= section %d has no ice-ufrag/ice-pwd", ErrSDP, i)
		}
		// RFC 8839 section 5.4: ufrag 4..256 ice-chars, pwd 22..256.
		if len(ufrag) < 4 || len(ufrag) > 256 || len(pwd) < 22 || len(pwd) > 256 || !iceChars(ufrag) || !iceChars(pwd) {
			return o, fmt.Errorf("%w: m= section %d: bad ice credentials", ErrSDP, i)
		}
		if o.Ufrag == "" {
			o.Ufrag = ufrag
		} else if o.Ufrag != ufrag {
			// Bundled sections share one transport, so one ufrag; signaling
			// announces one ufrag per session.
			return o, fmt.Errorf("%w: sections carry different ice-ufrags", ErrSDP)
		}
		if _, ok := md.Attribute("fingerprint"); !ok && !sessFP {
			return o, fmt.Errorf("%w: m= section %d has no fingerprint", ErrSDP, i)
		}
		o.Media++
		if md.MediaName.Media == "audio" || md.MediaName.Media == "video" {
			_, sendrecv := md.Attribute("sendrecv")
			_, sendonly := md.Attribute("sendonly")
			_, recvonly := md.Attribute("recvonly")
			_, inactive := md.Attribute("inactive")
			// RFC 8866 section 6.7: sendrecv is the default.
			if sendrecv || sendonly || !(recvonly || inactive) {
				o.Sends = true
			}
		}
	}
	if o.Ufrag == "" {
		return o, fmt.Errorf("%w: no active media section", ErrSDP)
	}
	return o, nil
}

// iceChars reports whether s is only ice-char (RFC 8839 section 5.4: ALPHA
// / DIGIT / "+" / "/").
func iceChars(s string) bool {
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '+' || b == '/') {
			return false
		}
	}
	return true
}

// RewriteSDP returns body with every host candidate's address (and the c=
// lines) replaced by public, as the client must reach the node. It returns
// body unchanged when public is not valid. Errors wrap ErrSDP.
func RewriteSDP(body string, public netip.Addr) (string, error) {
	if !public.IsValid() {
		return body, nil
	}
	var sd sdp.SessionDescription
	if err := sd.UnmarshalString(body); err != nil {
		return "", fmt.Errorf("%w: %w", ErrSDP, err)
	}
	addrType := "IP4"
	if public.Is6() && !public.Is4In6() {
		addrType = "IP6"
	}
	fixConn := func(c *sdp.ConnectionInformation) {
		if c == nil || c.Address == nil {
			return
		}
		a, err := netip.ParseAddr(c.Address.Address)
		if err != nil || (a.Is4() != public.Is4() && !a.IsUnspecified()) {
			return
		}
		c.AddressType = addrType
		c.Address.Address = public.String()
	}
	fixConn(sd.ConnectionInformation)
	for _, md := range sd.MediaDescriptions {
		fixConn(md.ConnectionInformation)
		for i, a := range md.Attributes {
			if a.Key == "candidate" {
				md.Attributes[i].Value = rewriteCandidate(a.Value, public)
			}
		}
	}
	out, err := sd.Marshal()
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrSDP, err)
	}
	return string(out), nil
}
