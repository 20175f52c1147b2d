package loadgen

import (
	"encoding/binary"
	"testing"

	"github.com/pion/webrtc/v4"
)

// TestVideoStamps: with OnVideoSent the publisher stamps every video
// packet with a unique, increasing send time that VideoStamp reads back
// from the payload's end; a payload too short for one reads 0.
func TestVideoStamps(t *testing.T) {
	tr, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8}, "v", "s")
	if err != nil {
		t.Fatal(err)
	}
	var stamps []int64
	c := &Client{cfg: ClientConfig{VideoBitrate: 2_000_000, PacketSize: 1000, OnVideoSent: func(s int64) { stamps = append(stamps, s) }},
		videoTracks: []*webrtc.TrackLocalStaticRTP{tr}}
	p := newPublisher(c)
	for range 30 {
		p.step()
		// Outside a frame's end a tick's last packet is a full one: its
		// stamp is the payload's last 8 bytes.
		if n := len(stamps); p.tick%3 != 0 && (n == 0 || VideoStamp(p.payload[:p.size]) != stamps[n-1]) {
			t.Fatalf("tick %d: payload stamp %d, last stamp sent %v", p.tick, VideoStamp(p.payload[:p.size]), stamps)
		}
	}
	if len(stamps) == 0 || uint64(len(stamps)) != c.Sent() {
		t.Fatalf("%d stamps for %d video packets", len(stamps), c.Sent())
	}
	for i := 1; i < len(stamps); i++ {
		if stamps[i] <= stamps[i-1] {
			t.Fatalf("stamp %d (%d) not after %d", i, stamps[i], stamps[i-1])
		}
	}
	b := make([]byte, 40)
	binary.BigEndian.PutUint64(b[32:], 12345)
	if VideoStamp(b) != 12345 || VideoStamp(b[:18]) != 0 {
		t.Errorf("VideoStamp(40 bytes) = %d, VideoStamp(18 bytes) = %d", VideoStamp(b), VideoStamp(b[:18]))
	}
}
