package sipgw

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"

	"github.com/traverse-rtc/traverse/internal/logging"
	"github.com/traverse-rtc/traverse/internal/mediaproxy"
	"github.com/traverse-rtc/traverse/internal/persource"
)

var sdpSeeds = []string{
	"v=0\r\no=a 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=ssrc:1234 cname:x\r\n",
	"v=0\r\no=a 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 10.0.0.1\r\na=rtcp:4005 IN IP4 10.0.0.9\r\nm=video 0 RTP/AVP 96\r\n",
	"v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 8\r\nm=video 5002 RTP/AVP 96\r\na=ssrc:99 msid:a b\r\na=candidate:1 1 udp 1 1.2.3.4 5 typ host\r\n",
	"v=0\r\n",
}

// FuzzSDP parses and rewrites SDP: a parsed description must rewrite to
// one that parses again and carries the new address and ports.
func FuzzSDP(f *testing.F) {
	for _, s := range sdpSeeds {
		f.Add([]byte(s))
	}
	ip := netip.MustParseAddr("192.0.2.7")
	f.Fuzz(func(t *testing.T, b []byte) {
		sd, ss, err := parseSDP(b)
		if err != nil {
			return
		}
		pp := make([]ports, len(ss))
		for i := range pp {
			pp[i] = ports{uint16(20000 + 2*i), uint16(20011 + 2*i)}
		}
		out, err := rewriteSDP(sd, ss, ip, pp)
		if err != nil {
			return
		}
		_, ss2, err := parseSDP(out)
		if err != nil {
			t.Fatalf("rewritten SDP does not parse: %v\n%s", err, out)
		}
		for i, s := range ss2 {
			if ss[i].disabled != s.disabled {
				t.Fatal("stream enabled state changed")
			}
			if !s.disabled && (s.rtp != netip.AddrPortFrom(ip, pp[i].rtp) || s.rtcp != netip.AddrPortFrom(ip, pp[i].rtcp)) {
				t.Fatalf("stream %d: %v %v after rewrite\n%s", i, s.rtp, s.rtcp, out)
			}
		}
	})
}

// FuzzSIP runs parsed SIP messages through the gateway's request checks and
// SDP rewriting against a live media proxy; every session made is removed
// again, so a leak shows as ports in use.
func FuzzSIP(f *testing.F) {
	f.Add([]byte(invite("f1", sdpSeeds[0])))
	f.Add([]byte(invite("f2", sdpSeeds[2])))
	f.Add([]byte(strings.Replace(invite("f3", ""), "To: <sip:svc@127.0.0.1>", "To: <sip:svc@127.0.0.1>;tag=9", 1)))
	f.Add([]byte("REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: r\r\nCSeq: 1 REGISTER\r\nContact: <sip:a@1.2.3.4:5060>;expires=60\r\nRoute: <sip:127.0.0.1:5060;lr>\r\nContent-Length: 0\r\n\r\n"))
	mp, err := mediaproxy.New(mediaproxy.Config{
		RTP: netip.MustParseAddrPort("127.0.0.1:0"), RTCP: netip.MustParseAddrPort("127.0.0.1:0"),
		InsideIP: insideIP, InsidePorts: mediaproxy.PortRange{Low: 45000, High: 45100},
	})
	if err != nil {
		f.Skip(err)
	}
	f.Cleanup(func() { mp.Close() })
	g, err := New(Config{SIP: netip.MustParseAddrPort("127.0.0.1:0"), Upstream: netip.MustParseAddrPort("127.0.0.2:5080"), Media: mp})
	if err != nil {
		f.Skip(err)
	}
	f.Cleanup(func() { g.Close() })
	parser := sip.NewParser()
	f.Fuzz(func(t *testing.T, b []byte) {
		msg, err := parser.ParseSIP(b)
		if err != nil {
			return
		}
		req, ok := msg.(*sip.Request)
		if !ok || !valid(req) {
			return
		}
		// Dialog matching on whatever tags and Call-ID the message carries.
		d := newCall(req.CallID().Value(), true, netip.MustParseAddrPort("192.0.2.1:5060"), "UDP", "127.0.0.2:5080", fromTag(req))
		d.early(toTag(req))
		if !d.matches(fromTag(req), toTag(req), netip.MustParseAddrPort("192.0.2.1:5060"), "udp", false) && toTag(req) != "" {
			t.Fatalf("the dialog's own tags from its own party do not match: %q %q", fromTag(req), toTag(req))
		}
		if d.matches(fromTag(req), toTag(req), netip.MustParseAddrPort("192.0.2.2:5060"), "UDP", false) {
			t.Fatal("matched from another address")
		}
		g.removeOwnRoutes(req)
		_ = expiresOf(req, sip.NewResponseFromRequest(req, 200, "OK", nil))
		if len(req.Body()) == 0 || !isSDP(req) {
			return
		}
		c := newCall(req.CallID().Value(), true, netip.MustParseAddrPort("192.0.2.1:5060"), "UDP", "127.0.0.2:5080", fromTag(req))
		c.share = persource.Key(netip.MustParseAddr("192.0.2.1"))
		if c.id == "" || len(c.id) > 255 {
			return
		}
		// An initial offer applied at once, then the same body staged as a
		// re-offer and discarded, then staged and committed.
		if _, _, err := g.rewrite(c, req.Body(), false, false); err == nil {
			if _, of, err := g.rewrite(c, req.Body(), true, true); err == nil {
				g.discard(c, of)
			}
			if _, of, err := g.rewrite(c, req.Body(), false, true); err == nil {
				g.commit(c, of)
			}
		}
		g.release(c)
		if g.mp.PortsInUse() != 0 || g.SourceStreams(c.share.Addr()) != 0 {
			t.Fatalf("ports leaked: %d in use, %d counted", g.mp.PortsInUse(), g.SourceStreams(c.share.Addr()))
		}
	})
}

func TestParseSDPTable(t *testing.T) {
	tests := []struct {
		name    string
		sdp     string
		wantErr bool
		rtp     string
		rtcp    string
		ssrc    uint32
	}{
		{"session c, ssrc", sdpSeeds[0], false, "10.0.0.1:4000", "", 1234},
		{"media c, rtcp attr", sdpSeeds[1], false, "10.0.0.1:4000", "10.0.0.9:4005", 0},
		{"ipv6", sdpSeeds[2], false, "[::1]:5000", "", 0},
		{"no media", sdpSeeds[3], true, "", "", 0},
		{"bad ssrc", strings.Replace(sdpSeeds[0], "a=ssrc:1234", "a=ssrc:x", 1), true, "", "", 0},
		{"multicast", strings.Replace(sdpSeeds[0], "c=IN IP4 10.0.0.1", "c=IN IP4 224.0.0.1", 1), true, "", "", 0},
	}
	for _, tt := range tests {
		_, ss, err := parseSDP([]byte(tt.sdp))
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: err %v", tt.name, err)
			continue
		}
		if err != nil {
			continue
		}
		s := ss[0]
		if s.rtp.String() != tt.rtp || (tt.rtcp != "" && s.rtcp.String() != tt.rtcp) || s.ssrc != tt.ssrc {
			t.Errorf("%s: got %v %v %d", tt.name, s.rtp, s.rtcp, s.ssrc)
		}
	}
}

// FuzzLogHandler logs what an outside party sends (as sipgo logs an
// unparseable datagram) through the gateway's log handler: whatever the
// bytes, the line stays bounded and the parse failure is counted.
func FuzzLogHandler(f *testing.F) {
	f.Add([]byte("INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4"))
	f.Add(bytes.Repeat([]byte("\xff\x00\n"), 4000))
	f.Add([]byte("\"\\\r\n\u2028"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var buf bytes.Buffer
		var c Counters
		log := newLogger(slog.New(slog.NewTextHandler(&buf, nil)), &c, nil)
		_, err := sip.NewParser().ParseSIP(b)
		if err == nil {
			err = errors.New(string(b))
		}
		log.Error(parseFailureMsg, "data", string(b), "error", err, "raw", b, "group", slog.GroupValue(slog.String("s", string(b))))
		var n uint64
		for i := range numUnparse {
			n += c.Unparseable[i].Load()
		}
		if n != 1 {
			t.Fatalf("counted %d", n)
		}
		// Four attributes of at most logging.DefaultMaxValue bytes, each
		// byte at most 4 once quoted (\xff), plus the cut marks and the
		// handler's own fields.
		if buf.Len() > 4*(4*logging.DefaultMaxValue+60)+200 || bytes.Count(buf.Bytes(), []byte("\n")) != 1 {
			t.Fatalf("%d bytes, %d lines", buf.Len(), bytes.Count(buf.Bytes(), []byte("\n")))
		}
	})
}
