package signal

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/pion/webrtc/v4"
)

// browserOffer is shaped like Chromium's offer: audio and video sendrecv,
// a data channel, one bundle.
const browserOffer = "v=0\r\n" +
	"o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n" +
	"s=-\r\n" +
	"t=0 0\r\n" +
	"a=group:BUNDLE 0 1 2\r\n" +
	"a=extmap-allow-mixed\r\n" +
	"a=msid-semantic: WMS stream\r\n" +
	"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" +
	"c=IN IP4 0.0.0.0\r\n" +
	"a=rtcp:9 IN IP4 0.0.0.0\r\n" +
	"a=ice-ufrag:q7bK\r\n" +
	"a=ice-pwd:2fyrG3DtY7Vu8Jd6k6N0Qe9x\r\n" +
	"a=ice-options:trickle\r\n" +
	"a=fingerprint:sha-256 E4:4E:2A:DC:9D:2D:30:8D:AD:FC:F1:DB:8B:8A:7A:14:55:C8:23:5A:9D:3C:A9:69:7B:8D:1B:05:A0:66:2B:1E\r\n" +
	"a=setup:actpass\r\n" +
	"a=mid:0\r\n" +
	"a=sendrecv\r\n" +
	"a=msid:stream audio-1\r\n" +
	"a=rtcp-mux\r\n" +
	"a=rtpmap:111 opus/48000/2\r\n" +
	"m=video 9 UDP/TLS/RTP/SAVPF 96\r\n" +
	"c=IN IP4 0.0.0.0\r\n" +
	"a=ice-ufrag:q7bK\r\n" +
	"a=ice-pwd:2fyrG3DtY7Vu8Jd6k6N0Qe9x\r\n" +
	"a=fingerprint:sha-256 E4:4E:2A:DC:9D:2D:30:8D:AD:FC:F1:DB:8B:8A:7A:14:55:C8:23:5A:9D:3C:A9:69:7B:8D:1B:05:A0:66:2B:1E\r\n" +
	"a=setup:actpass\r\n" +
	"a=mid:1\r\n" +
	"a=sendrecv\r\n" +
	"a=rtcp-mux\r\n" +
	"a=rtpmap:96 VP8/90000\r\n" +
	"m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n" +
	"c=IN IP4 0.0.0.0\r\n" +
	"a=ice-ufrag:q7bK\r\n" +
	"a=ice-pwd:2fyrG3DtY7Vu8Jd6k6N0Qe9x\r\n" +
	"a=fingerprint:sha-256 E4:4E:2A:DC:9D:2D:30:8D:AD:FC:F1:DB:8B:8A:7A:14:55:C8:23:5A:9D:3C:A9:69:7B:8D:1B:05:A0:66:2B:1E\r\n" +
	"a=setup:actpass\r\n" +
	"a=mid:2\r\n" +
	"a=sctp-port:5000\r\n"

// pionOffer returns a real offer made by pion with the given directions.
func pionOffer(t testing.TB, dir webrtc.RTPTransceiverDirection) string {
	t.Helper()
	pc, err := webrtc.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	for _, k := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeAudio, webrtc.RTPCodecTypeVideo} {
		if _, err := pc.AddTransceiverFromKind(k, webrtc.RTPTransceiverInit{Direction: dir}); err != nil {
			t.Fatal(err)
		}
	}
	o, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	return o.SDP
}

func TestParseOffer(t *testing.T) {
	o, err := ParseOffer(browserOffer)
	if err != nil {
		t.Fatal(err)
	}
	if o.Ufrag != "q7bK" || !o.Sends || o.Media != 3 {
		t.Fatalf("offer = %+v", o)
	}
	po, err := ParseOffer(pionOffer(t, webrtc.RTPTransceiverDirectionRecvonly))
	if err != nil {
		t.Fatal(err)
	}
	if po.Sends || po.Media != 2 || po.Ufrag == "" {
		t.Fatalf("pion recvonly offer = %+v", po)
	}
	if po, err = ParseOffer(pionOffer(t, webrtc.RTPTransceiverDirectionSendonly)); err != nil || !po.Sends {
		t.Fatalf("pion sendonly offer = %+v, %v", po, err)
	}
	for name, body := range map[string]string{
		"empty":        "",
		"not sdp":      "hello",
		"no media":     "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n",
		"no ufrag":     strings.ReplaceAll(browserOffer, "a=ice-ufrag:q7bK\r\n", ""),
		"short pwd":    strings.ReplaceAll(browserOffer, "2fyrG3DtY7Vu8Jd6k6N0Qe9x", "short"),
		"two ufrags":   strings.Replace(browserOffer, "a=ice-ufrag:q7bK", "a=ice-ufrag:zzzz", 1),
		"no print":     strings.ReplaceAll(browserOffer, "a=fingerprint:", "a=fingerprintx:"),
		"bad ufrag ch": strings.ReplaceAll(browserOffer, "q7bK", "q7b\""),
	} {
		if _, err := ParseOffer(body); !errors.Is(err, ErrSDP) {
			t.Errorf("%s: err = %v, want ErrSDP", name, err)
		}
	}
}

func TestRewriteSDP(t *testing.T) {
	answer := strings.Replace(browserOffer, "a=mid:0\r\n",
		"a=mid:0\r\na=candidate:1 1 udp 2130706431 10.0.0.5 7882 typ host\r\n"+
			"a=candidate:2 1 tcp 1671430143 10.0.0.5 7881 typ host tcptype passive\r\n"+
			"a=candidate:3 1 udp 2130706431 fd00::5 7882 typ host\r\n"+
			"a=candidate:4 1 udp 1694498815 198.51.100.9 7882 typ srflx raddr 10.0.0.5 rport 7882\r\n", 1)
	out, err := RewriteSDP(answer, netip.MustParseAddr("203.0.113.7"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"a=candidate:1 1 udp 2130706431 203.0.113.7 7882 typ host\r\n",
		"a=candidate:2 1 tcp 1671430143 203.0.113.7 7881 typ host tcptype passive\r\n",
		"a=candidate:3 1 udp 2130706431 fd00::5 7882 typ host\r\n",
		"typ srflx raddr 10.0.0.5",
		"c=IN IP4 203.0.113.7\r\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("rewritten SDP lacks %q:\n%s", want, out)
		}
	}
	if same, _ := RewriteSDP(answer, netip.Addr{}); same != answer {
		t.Error("no public address must leave the SDP alone")
	}
}

func TestParseCandidate(t *testing.T) {
	c, err := ParseCandidate("candidate:842163049 1 udp 1677729535 127.0.0.1 52431 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag q7bK network-cost 999")
	if err != nil {
		t.Fatal(err)
	}
	if c.Address != "127.0.0.1" || c.Port != 52431 || c.Type != "srflx" || c.Transport != "udp" || c.Component != 1 {
		t.Fatalf("%+v", c)
	}
	if _, err := ParseCandidate("candidate:1 1 udp 1 0c4e6f0e-1d8e-4b2c-9f1a-6a1f2b3c4d5e.local 5000 typ host"); err != nil {
		t.Fatalf("mdns candidate: %v", err)
	}
	for _, s := range []string{"", "candidate:1 1 udp", "candidate:1 1 sctp 1 1.2.3.4 5 typ host",
		"candidate:1 1 udp 1 1.2.3.4 99999 typ host", "candidate:1 1 udp 1 evil.com 5 typ host",
		"candidate:1 1 udp 1 1.2.3.4 5 typ bogus", "candidate:1 0 udp 1 1.2.3.4 5 typ host"} {
		if _, err := ParseCandidate(s); !errors.Is(err, ErrMessage) {
			t.Errorf("%q: err = %v", s, err)
		}
	}
}

func FuzzParseOffer(f *testing.F) {
	f.Add(browserOffer)
	f.Add(pionOffer(f, webrtc.RTPTransceiverDirectionSendrecv))
	f.Add("v=0\r\n")
	f.Fuzz(func(t *testing.T, s string) {
		o, err := ParseOffer(s)
		if err != nil {
			if !errors.Is(err, ErrSDP) {
				t.Fatalf("error %v does not wrap ErrSDP", err)
			}
			return
		}
		if o.Ufrag == "" || o.Media == 0 {
			t.Fatalf("accepted offer without ufrag or media: %+v", o)
		}
		if _, err := RewriteSDP(s, netip.MustParseAddr("192.0.2.1")); err != nil {
			t.Fatalf("parsed offer does not rewrite: %v", err)
		}
	})
}

func FuzzParseCandidate(f *testing.F) {
	f.Add("candidate:842163049 1 udp 1677729535 127.0.0.1 52431 typ srflx raddr 0.0.0.0 rport 0 generation 0")
	f.Add("candidate:1 1 tcp 1 ::1 9 typ host tcptype active")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCandidate(s)
		if err != nil {
			if !errors.Is(err, ErrMessage) {
				t.Fatal(err)
			}
			return
		}
		r := rewriteCandidate("candidate:"+strings.TrimPrefix(strings.TrimPrefix(s, "a="), "candidate:"), netip.MustParseAddr("192.0.2.1"))
		if c2, err := ParseCandidate(r); err != nil || c2.Port != c.Port || c2.Type != c.Type {
			t.Fatalf("rewrite broke %q -> %q: %v", s, r, err)
		}
	})
}
