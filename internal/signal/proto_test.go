package signal

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestDecodeClient(t *testing.T) {
	for _, tc := range []struct {
		in   string
		typ  string
		fail bool
	}{
		{`{"type":"join","token":"a.b.c"}`, TypeJoin, false},
		{`{"type":"join"}`, "", true},
		{`{"type":"offer","sdp":"v=0"}`, TypeOffer, false},
		{`{"type":"answer"}`, "", true},
		{`{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}}`, TypeCandidate, false},
		{`{"type":"candidate","candidate":{"candidate":""}}`, TypeCandidate, false},
		{`{"type":"candidate","candidate":{"candidate":"junk"}}`, "", true},
		{`{"type":"candidate"}`, "", true},
		{`{"type":"leave","extra":1}`, TypeLeave, false},
		{`{"type":"ping"}`, TypePing, false},
		{`{"type":"bogus"}`, "", true},
		{`{}`, "", true},
		{`[]`, "", true},
		{`null`, "", true},
		{`{"type":"offer","sdp":"` + strings.Repeat("a", maxSDPLen+1) + `"}`, "", true},
		{`{"type":1}`, "", true},
		{`{"type":"layer","track":"t1","streamId":"s1","maxLayer":0}`, TypeLayer, false},
		{`{"type":"layer","track":"*","maxLayer":2}`, TypeLayer, false},
		{`{"type":"layer","track":"t1","width":640,"height":360}`, TypeLayer, false},
		{`{"type":"layer","track":"t1","width":640}`, TypeLayer, false},
		{`{"type":"layer","track":"t1"}`, "", true},
		{`{"type":"layer","maxLayer":1}`, "", true},
		{`{"type":"layer","track":"t1","maxLayer":3}`, "", true},
		{`{"type":"layer","track":"t1","maxLayer":-1}`, "", true},
		{`{"type":"layer","track":"t1","width":-5,"height":10}`, "", true},
		{`{"type":"layer","track":"t1","width":20000,"height":10}`, "", true},
		{`{"type":"layer","track":"` + strings.Repeat("a", 257) + `","maxLayer":1}`, "", true},
	} {
		m, err := DecodeClient([]byte(tc.in))
		if tc.fail {
			if !errors.Is(err, ErrMessage) || Class(err) != ClassBadRequest {
				t.Errorf("%.60s: err = %v, want bad-request ErrMessage", tc.in, err)
			}
			continue
		}
		if err != nil || m.Type != tc.typ {
			t.Errorf("%.60s: %+v, %v", tc.in, m, err)
		}
	}
}

func FuzzDecodeClient(f *testing.F) {
	for _, s := range []string{
		`{"type":"join","token":"a.b.c"}`,
		`{"type":"offer","sdp":"v=0\r\n"}`,
		`{"type":"answer","sdp":"v=0\r\n"}`,
		`{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd"}}`,
		`{"type":"leave"}`, `{"type":"ping"}`, `{}`, `{"type":"x"}`,
		`{"type":"layer","track":"t1","streamId":"s1","maxLayer":1}`, `{"type":"layer","track":"*","width":320,"height":180}`,
		`{"type":"p2p-offer","sdp":"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:abcd\r\na=sendrecv\r\n"}`,
		`{"type":"p2p-answer","sdp":"v=0\r\n"}`, `{"type":"sfu-release"}`,
		`{"type":"p2p-candidate","candidate":{"candidate":"candidate:1 1 udp 1 192.0.2.1 5000 typ srflx raddr 10.0.0.1 rport 5000","sdpMid":"0"}}`,
		`{"type":"p2p-candidate","candidate":{"candidate":""}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeClient(b)
		if err != nil {
			if !errors.Is(err, ErrMessage) {
				t.Fatalf("error %v does not wrap ErrMessage", err)
			}
			return
		}
		// What decodes re-encodes and decodes to the same message.
		out, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := DecodeClient(out)
		if err != nil || m2.Type != m.Type || m2.SDP != m.SDP || m2.Token != m.Token || m2.Track != m.Track ||
			m2.StreamID != m.StreamID || m2.Width != m.Width || m2.Height != m.Height ||
			(m2.MaxLayer == nil) != (m.MaxLayer == nil) || m.MaxLayer != nil && *m2.MaxLayer != *m.MaxLayer {
			t.Fatalf("round trip: %+v -> %s -> %+v, %v", m, out, m2, err)
		}
	})
}
