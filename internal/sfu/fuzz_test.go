package sfu

import (
	"testing"

	"github.com/pion/rtp"

	"github.com/traverse-rtc/traverse/internal/rtpcodec"
)

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
		rtpcodec.AudioLevel(p.GetExtension(1))
		rtpcodec.VP8.Keyframe(p.Payload)
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
