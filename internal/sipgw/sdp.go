package sipgw

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/pion/sdp/v3"

	"github.com/traverse-rtc/traverse/internal/mediaproxy"
)

// maxStreams bounds the m-lines of one SDP the gateway will proxy: each
// takes an inside port pair, so an offer cannot drain the pool alone.
const maxStreams = 8

// stream is one m-line of an SDP as the gateway needs it.
type stream struct {
	index    int
	kind     mediaproxy.Kind
	rtp      netip.AddrPort // c= address and m= port
	rtcp     netip.AddrPort // from a=rtcp (RFC 3605); zero means RTP port + 1
	ssrc     uint32         // first a=ssrc (RFC 5576)
	hasSSRC  bool
	disabled bool // port 0: the stream is rejected or removed
}

// parseSDP parses an offer or answer and extracts each m-line's media
// address, RTCP address and SSRC. Anything the gateway could not proxy
// faithfully (no connection address, a host name, a port range) is an
// error: the caller answers 488 and creates nothing.
func parseSDP(body []byte) (*sdp.SessionDescription, []stream, error) {
	var sd sdp.SessionDescription
	if err := sd.Unmarshal(body); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrBadSDP, err)
	}
	if len(sd.MediaDescriptions) == 0 || len(sd.MediaDescriptions) > maxStreams {
		return nil, nil, fmt.Errorf("%w: %d m-lines (1-%d)", ErrBadSDP, len(sd.MediaDescriptions), maxStreams)
	}
	var sessionAddr netip.Addr
	if sd.ConnectionInformation != nil {
		a, err := connAddr(sd.ConnectionInformation)
		if err != nil {
			return nil, nil, err
		}
		sessionAddr = a
	}
	out := make([]stream, 0, len(sd.MediaDescriptions))
	for i, md := range sd.MediaDescriptions {
		s := stream{index: i}
		switch md.MediaName.Media {
		case "audio":
			s.kind = mediaproxy.KindAudio
		case "video":
			s.kind = mediaproxy.KindVideo
		default:
			s.kind = mediaproxy.KindOther
		}
		port := md.MediaName.Port.Value
		if port < 0 || port > 65535 || md.MediaName.Port.Range != nil {
			return nil, nil, fmt.Errorf("%w: m-line %d port", ErrBadSDP, i)
		}
		if port == 0 {
			s.disabled = true
			out = append(out, s)
			continue
		}
		addr := sessionAddr
		if md.ConnectionInformation != nil {
			a, err := connAddr(md.ConnectionInformation)
			if err != nil {
				return nil, nil, err
			}
			addr = a
		}
		if !addr.IsValid() {
			return nil, nil, fmt.Errorf("%w: m-line %d has no connection address", ErrBadSDP, i)
		}
		s.rtp = netip.AddrPortFrom(addr, uint16(port))
		if v, ok := md.Attribute("rtcp"); ok {
			rtcp, err := parseRTCPAttr(v, addr)
			if err != nil {
				return nil, nil, err
			}
			s.rtcp = rtcp
		}
		if v, ok := md.Attribute("ssrc"); ok {
			id, _, _ := strings.Cut(v, " ")
			n, err := strconv.ParseUint(id, 10, 32)
			if err != nil {
				return nil, nil, fmt.Errorf("%w: a=ssrc:%s", ErrBadSDP, v)
			}
			s.ssrc, s.hasSSRC = uint32(n), true
		}
		out = append(out, s)
	}
	return &sd, out, nil
}

func connAddr(c *sdp.ConnectionInformation) (netip.Addr, error) {
	if c.Address == nil || c.NetworkType != "IN" {
		return netip.Addr{}, fmt.Errorf("%w: connection line", ErrBadSDP)
	}
	a, err := netip.ParseAddr(c.Address.Address)
	if err != nil || a.IsMulticast() || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%w: connection address %q", ErrBadSDP, c.Address.Address)
	}
	return a.Unmap(), nil
}

// parseRTCPAttr parses "a=rtcp:PORT [IN IP4 ADDR]" (RFC 3605).
func parseRTCPAttr(v string, def netip.Addr) (netip.AddrPort, error) {
	f := strings.Fields(v)
	if len(f) == 0 {
		return netip.AddrPort{}, fmt.Errorf("%w: a=rtcp", ErrBadSDP)
	}
	p, err := strconv.ParseUint(f[0], 10, 16)
	if err != nil || p == 0 {
		return netip.AddrPort{}, fmt.Errorf("%w: a=rtcp:%s", ErrBadSDP, v)
	}
	addr := def
	if len(f) >= 4 {
		a, err := netip.ParseAddr(f[3])
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("%w: a=rtcp:%s", ErrBadSDP, v)
		}
		addr = a.Unmap()
	}
	return netip.AddrPortFrom(addr, uint16(p)), nil
}

// ports is where one stream's media must go after rewriting.
type ports struct{ rtp, rtcp uint16 }

// rewriteSDP points every enabled m-line of sd at ip and the given ports,
// and returns the new body. a=rtcp is written only when RTCP is not RTP+1
// (RFC 3605); ICE candidates are removed (the gateway is the media path).
func rewriteSDP(sd *sdp.SessionDescription, ss []stream, ip netip.Addr, pp []ports) ([]byte, error) {
	addrType := "IP4"
	if ip.Is6() {
		addrType = "IP6"
	}
	conn := func() *sdp.ConnectionInformation {
		return &sdp.ConnectionInformation{NetworkType: "IN", AddressType: addrType, Address: &sdp.Address{Address: ip.String()}}
	}
	sd.Origin.AddressType, sd.Origin.UnicastAddress = addrType, ip.String()
	sd.ConnectionInformation = conn()
	for i, md := range sd.MediaDescriptions {
		if ss[i].disabled {
			continue
		}
		md.ConnectionInformation = nil
		md.MediaName.Port = sdp.RangedPort{Value: int(pp[i].rtp)}
		attrs := md.Attributes[:0]
		for _, a := range md.Attributes {
			switch a.Key {
			case "rtcp", "candidate", "end-of-candidates", "ice-ufrag", "ice-pwd", "ice-options", "remote-candidates", "rtcp-mux":
				continue
			}
			attrs = append(attrs, a)
		}
		if pp[i].rtcp != pp[i].rtp+1 {
			attrs = append(attrs, sdp.Attribute{Key: "rtcp", Value: fmt.Sprintf("%d IN %s %s", pp[i].rtcp, addrType, ip)})
		}
		md.Attributes = attrs
	}
	var out []sdp.Attribute
	for _, a := range sd.Attributes {
		switch a.Key {
		case "ice-ufrag", "ice-pwd", "ice-options", "ice-lite":
			continue
		}
		out = append(out, a)
	}
	sd.Attributes = out
	return sd.Marshal()
}

// endpoints is where the media proxy may expect one outside stream's media
// from (and, once it arrived from there, send to).
type endpoints struct {
	rtp, rtcp netip.AddrPort
	refused   bool // no plausible address: the stream has no destination
}

// outsideMedia applies the media proxy's destination policy to every
// address an outside party named for its streams (c= at session and media
// level, a=rtcp with an address), in an offer, an answer or a later
// re-INVITE or UPDATE. sig is the address its signaling came from.
//
//   - A private c= (RFC 1918, RFC 4193) while the signaling comes from a
//     non-private address is a client behind a NAT: its media will come
//     from the signaling address (with the SDP's port).
//   - A refused address (loopback, link-local and metadata, CGNAT,
//     unspecified, multicast, the gateway's own sockets, ... see
//     mediaproxy.Config.Policy) is replaced by the signaling address when
//     that one is allowed: the only address the party has shown to be its
//     own. An a=rtcp address that is refused falls back to the RTP one.
//   - A stream left with no allowed address is refused: it has no
//     destination, and the media proxy sends it nothing.
//
// When every enabled stream is refused the SDP is refused as a whole
// (ErrMediaRefused: 488 to an offer, which leaves an existing session as it
// was, RFC 3261 section 14.1).
func outsideMedia(mp *mediaproxy.Proxy, sig netip.Addr, ss []stream) ([]endpoints, error) {
	out := make([]endpoints, len(ss))
	enabled, refused := 0, 0
	for i, s := range ss {
		if s.disabled {
			continue
		}
		enabled++
		rtp, rtcp := s.rtp, s.rtcp
		if sig.IsValid() && rtp.Addr().IsPrivate() && !sig.IsPrivate() {
			rtp = netip.AddrPortFrom(sig, rtp.Port())
			if rtcp.IsValid() {
				rtcp = netip.AddrPortFrom(sig, rtcp.Port())
			}
		}
		if mp.CheckOutside(rtp) != nil {
			alt := netip.AddrPortFrom(sig, rtp.Port())
			if !sig.IsValid() || alt == rtp || mp.CheckOutside(alt) != nil {
				out[i].refused = true
				refused++
				continue
			}
			rtp = alt
		}
		if rtcp.IsValid() && mp.CheckOutside(rtcp) != nil {
			rtcp = netip.AddrPortFrom(rtp.Addr(), rtcp.Port())
			if mp.CheckOutside(rtcp) != nil {
				rtcp = netip.AddrPort{}
			}
		}
		out[i].rtp, out[i].rtcp = rtp, rtcp
	}
	if enabled > 0 && refused == enabled {
		return nil, ErrMediaRefused
	}
	return out, nil
}
