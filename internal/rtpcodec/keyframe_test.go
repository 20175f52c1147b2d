package rtpcodec

import "testing"

func TestKeyframe(t *testing.T) {
	tests := []struct {
		name string
		c    Codec
		p    []byte
		want bool
	}{
		{"vp8 key", VP8, []byte{0x10, 0x00, 0x9d}, true},
		{"vp8 delta", VP8, []byte{0x10, 0x01}, false},
		{"vp8 not start", VP8, []byte{0x00, 0x00}, false},
		{"vp8 ext picture id 15 bit key", VP8, []byte{0x90, 0x80, 0x81, 0x02, 0x00}, true},
		{"vp8 ext picture id, tl0, tid key", VP8, []byte{0x90, 0xe0, 0x05, 0x01, 0x20, 0x00}, true},
		{"vp8 truncated", VP8, []byte{0x90}, false},
		{"vp9 key", VP9, []byte{0x08}, true},
		{"vp9 inter", VP9, []byte{0x48}, false},
		{"vp9 layer 1", VP9, []byte{0xa8, 0x05, 0x02}, false},
		{"vp9 layer 0", VP9, []byte{0xa8, 0x05, 0x00}, true},
		{"h264 idr", H264, []byte{0x65}, true},
		{"h264 sps", H264, []byte{0x67}, true},
		{"h264 p", H264, []byte{0x41}, false},
		{"h264 stap-a with sps", H264, []byte{0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68}, true},
		{"h264 stap-a bad size", H264, []byte{0x78, 0x00, 0x09, 0x67}, false},
		{"h264 fu-a idr start", H264, []byte{0x7c, 0x85}, true},
		{"h264 fu-a idr middle", H264, []byte{0x7c, 0x05}, false},
		{"av1 new sequence", AV1, []byte{0x08}, true},
		{"av1 other", AV1, []byte{0x10}, false},
		{"empty", VP8, nil, false},
		{"unknown codec switches at once", Other, nil, true},
	}
	for _, tt := range tests {
		if got := tt.c.Keyframe(tt.p); got != tt.want {
			t.Errorf("%s: got %v", tt.name, got)
		}
	}
	if l, v, ok := AudioLevel([]byte{0x80 | 30}); !ok || !v || l != 97 {
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
		for c := Other; c <= AV1; c++ {
			c.Keyframe(p)
		}
		AudioLevel(p)
	})
}
