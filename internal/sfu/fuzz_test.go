package sfu

import (
	"testing"

	"github.com/pion/rtp"
)

func TestKeyframe(t *testing.T) {
	tests := []struct {
		name string
		c    codecKind
		p    []byte
		want bool
	}{
		{"vp8 key", codecVP8, []byte{0x10, 0x00, 0x9d}, true},
		{"vp8 delta", codecVP8, []byte{0x10, 0x01}, false},
		{"vp8 not start", codecVP8, []byte{0x00, 0x00}, false},
		{"vp8 ext picture id 15 bit key", codecVP8, []byte{0x90, 0x80, 0x81, 0x02, 0x00}, true},
		{"vp8 ext picture id, tl0, tid key", codecVP8, []byte{0x90, 0xe0, 0x05, 0x01, 0x20, 0x00}, true},
		{"vp8 truncated", codecVP8, []byte{0x90}, false},
		{"vp9 key", codecVP9, []byte{0x08}, true},
		{"vp9 inter", codecVP9, []byte{0x48}, false},
		{"vp9 layer 1", codecVP9, []byte{0xa8, 0x05, 0x02}, false},
		{"vp9 layer 0", codecVP9, []byte{0xa8, 0x05, 0x00}, true},
		{"h264 idr", codecH264, []byte{0x65}, true},
		{"h264 sps", codecH264, []byte{0x67}, true},
		{"h264 p", codecH264, []byte{0x41}, false},
		{"h264 stap-a with sps", codecH264, []byte{0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68}, true},
		{"h264 stap-a bad size", codecH264, []byte{0x78, 0x00, 0x09, 0x67}, false},
		{"h264 fu-a idr start", codecH264, []byte{0x7c, 0x85}, true},
		{"h264 fu-a idr middle", codecH264, []byte{0x7c, 0x05}, false},
		{"av1 new sequence", codecAV1, []byte{0x08}, true},
		{"av1 other", codecAV1, []byte{0x10}, false},
		{"empty", codecVP8, nil, false},
		{"unknown codec switches at once", codecOther, nil, true},
	}
	for _, tt := range tests {
		if got := isKeyframe(tt.c, tt.p); got != tt.want {
			t.Errorf("%s: got %v", tt.name, got)
		}
	}
	if l, v, ok := audioLevel([]byte{0x80 | 30}); !ok || !v || l != 97 {
		t.Errorf("audio level %d %v %v", l, v, ok)
	}
}

// FuzzKeyframe feeds the codec payload parsers the SFU runs on every
// incoming video packet.
func FuzzKeyframe(f *testing.F) {
	for _, s := range [][]byte{{0x10, 0x00}, {0x90, 0xe0, 0x05, 0x01, 0x20, 0x00}, {0xa8, 0x05, 0x00}, {0x78, 0x00, 0x02, 0x67, 0x42}, {0x7c, 0x85}, {0x08}} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		for c := codecOther; c <= codecAV1; c++ {
			isKeyframe(c, p)
		}
		audioLevel(p)
	})
}

// FuzzRTP feeds the SFU's own RTP path: parse as its read loop does, read
// the audio level extension, detect keyframes, and rewrite the header as
// a downTrack does; the rewritten packet must marshal and parse back.
func FuzzRTP(f *testing.F) {
	seed := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: 1, Timestamp: 3000, SSRC: 5}, Payload: []byte{0x10, 0x00, 0x00}}
	_ = seed.Header.SetExtension(1, []byte{0x9e})
	b, _ := seed.Marshal()
	f.Add(b)
	f.Add([]byte{0x80, 0x60, 0x00, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		var p rtp.Packet
		if err := p.Unmarshal(b); err != nil {
			return
		}
		audioLevel(p.GetExtension(1))
		isKeyframe(codecVP8, p.Payload)
		h := p.Header
		h.SSRC, h.PayloadType = 7, 111
		h.SequenceNumber += 1000
		h.Timestamp += 90000
		h.Extension, h.Extensions, h.ExtensionProfile = false, nil, 0
		h.Padding, h.PaddingSize = false, 0
		out, err := (&rtp.Packet{Header: h, Payload: p.Payload}).Marshal()
		if err != nil {
			t.Fatalf("rewritten packet does not marshal: %v", err)
		}
		var q rtp.Packet
		if err := q.Unmarshal(out); err != nil || q.SSRC != 7 || q.SequenceNumber != h.SequenceNumber {
			t.Fatalf("rewritten packet does not parse back: %v", err)
		}
	})
}

// FuzzSendsMedia feeds the SDP check the SFU runs on every offer.
func FuzzSendsMedia(f *testing.F) {
	f.Add("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\n")
	f.Add("v=0\r\nm=video 0 RTP/AVP 96\r\n")
	f.Fuzz(func(t *testing.T, s string) { _, _ = sendsMedia(s) })
}
