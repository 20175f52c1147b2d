package sfu

import (
	"net"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"
	"github.com/pion/webrtc/v4"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
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

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
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
