package loadgen

import (
	"context"
	"net/netip"
	"os"
	"testing"
	"time"
)

// TestJanus runs one publisher and one subscriber against the Janus at
// $JANUS_URL (bench/sfu-vs-janus.sh starts one); skipped without it.
func TestJanus(t *testing.T) {
	url := os.Getenv("JANUS_URL")
	if url == "" {
		t.Skip("JANUS_URL not set")
	}
	api, err := NewAPI(false, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	sum, err := Run(context.Background(), api, Config{Rooms: 1, Publishers: 1, Subscribers: 1, Duration: 2 * time.Second,
		JanusURL: url, RoomPrefix: "jt", VideoBitrate: 300_000})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", sum)
	if sum.PacketsReceived == 0 {
		t.Fatal("nothing received through Janus")
	}
}
