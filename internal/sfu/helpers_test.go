package sfu

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"
	"github.com/pion/webrtc/v4"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

func testutilCounter(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

// loopbackSettingEngine is the setting engine of test clients with their
// own pion API: host candidates on IPv4 loopback only, no mDNS.
func loopbackSettingEngine() webrtc.SettingEngine {
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetIPFilter(func(a net.IP) bool { return a.IsLoopback() })
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	return se
}

// anyLayer: waitVideo takes the video on whatever layer it arrives.
const anyLayer = -1

// waitVideo waits up to 15 s until sub receives a video track with more
// than min packets, on layer unless that is anyLayer, and returns it.
func waitVideo(t *testing.T, sub *loadgen.Client, min uint64, layer int) *loadgen.RecvStats {
	t.Helper()
	var video *loadgen.RecvStats
	testkit.WaitFor(t, 15*time.Second, fmt.Sprintf("video of %d packets on layer %d", min, layer), func() bool {
		for _, tr := range sub.Tracks() {
			if tr.Kind == "video" && tr.Packets() > min {
				video = tr
			}
		}
		return video != nil && (layer == anyLayer || video.Layer() == layer)
	})
	return video
}

// readSRTP reads one SRTP datagram from rc within 5 s and returns it
// decrypted with dec and parsed, and its length on the wire.
func readSRTP(t testing.TB, rc *net.UDPConn, dec *srtp.Context) (*rtp.Packet, int) {
	t.Helper()
	buf := make([]byte, 1600)
	_ = rc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := rc.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := dec.DecryptRTP(nil, buf[:n], nil)
	if err != nil {
		t.Fatalf("decrypt: %v", err)
	}
	var got rtp.Packet
	if err := got.Unmarshal(plain); err != nil {
		t.Fatal(err)
	}
	return &got, n
}

// videoSSRC returns the SSRC of the video c receives, 0 when none.
func videoSSRC(c *loadgen.Client) uint32 {
	for _, tr := range c.PC().GetTransceivers() {
		if r := tr.Receiver(); r != nil && r.Track() != nil && r.Track().Kind() == webrtc.RTPCodecTypeVideo {
			return uint32(r.Track().SSRC())
		}
	}
	return 0
}
