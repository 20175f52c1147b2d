package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relay"
	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// servingLocal is countingLocal that serves receiving clients: each is
// announced one track, index 3, and the test sends its media.
type servingLocal struct {
	countingLocal
	e        atomic.Pointer[relay.Endpoint]
	sub      atomic.Uint64
	feedback atomic.Int64
	layer    atomic.Int64 // the last layer choice + 1 (0: none)
}

func (l *servingLocal) ClientSubscribe(id relay.ClientID, _ relay.ClientGrant) {
	_ = l.e.Load().SendClientTrack(id, 3, &relaywire.SubTrack{Publisher: "alice", ClientTrack: relaywire.ClientTrack{
		ID: "cam", Kind: relaywire.KindVideo, Layers: 3, ClockRate: 90000, Mime: "video/VP8"}})
	l.sub.Store(uint64(id))
}
func (*servingLocal) ClientUnsubscribe(relay.ClientID, relay.ClientGrant) {}
func (l *servingLocal) ClientFeedback(relay.ClientID, uint8, uint8, []byte) {
	l.feedback.Add(1)
}
func (l *servingLocal) ClientLayer(_ relay.ClientID, track, layer uint8) error {
	if track != 3 {
		return relay.ErrNoTrack
	}
	l.layer.Store(int64(layer) + 1)
	return nil
}

// TestRelaySubscribeCommand: "traverse relay-subscribe" with credentials
// from "token --relay" receives the track the node announces and prints
// its packet count; it asks once for a keyframe of the video track.
func TestRelaySubscribeCommand(t *testing.T) {
	const key = "0123456789abcdef-relay"
	var out bytes.Buffer
	if err := mintToken(&out, []string{"--token-key", key, "--room", "standup", "--identity", "rec-1", "--publish=false", "--relay"}); err != nil {
		t.Fatal(err)
	}
	creds := writeCreds(t, out.Bytes())
	l := &servingLocal{}
	e := relayEndpoint(t, l, key)
	l.e.Store(e)
	testkit.Run(t, e.Run)
	stop := make(chan struct{})
	done := make(chan struct{})
	var sent atomic.Int64
	go func() { // media for the subscribed client, 1 ms apart, at most 10 s
		defer close(done)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for range 10_000 {
			if id := l.sub.Load(); id != 0 && e.SendClientMedia(relay.ClientID(id), 3, 0, []byte("rtp-packet")) == nil {
				sent.Add(1)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	var res bytes.Buffer
	err := relaySubscribe(context.Background(), &res, []string{"--relay", e.Addr().String(), "--credentials", creds, "--duration", "500ms"})
	close(stop)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^track 3 alice/cam video/VP8: (\d+) packets, (\d+) bytes, by layer (\d+)/0/0$`).FindStringSubmatch(res.String())
	if m == nil {
		t.Fatalf("relay-subscribe printed %q", res.String())
	}
	if n, _ := strconv.Atoi(m[1]); n < 50 || int64(n) > sent.Load() {
		t.Fatalf("%d packets counted of %d sent", n, sent.Load())
	}
	if m[1] != m[3] {
		t.Fatalf("%s packets, %s of them by layer 0", m[1], m[3])
	}
	testkit.WaitFor(t, 5*time.Second, "the keyframe request at the node", func() bool { return l.feedback.Load() == 1 })
	if l.layer.Load() != 0 {
		t.Fatal("a layer chosen without --layer")
	}
	// --layer 1: the video track's layer choice reaches the node (which
	// asks the publisher for the keyframe: no keyframe request of its own)
	if err := relaySubscribe(context.Background(), &res, []string{"--relay", e.Addr().String(), "--credentials", creds,
		"--duration", "300ms", "--layer", "1"}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "the layer choice at the node", func() bool { return l.layer.Load() == 1+1 })
	if l.feedback.Load() != 1 {
		t.Fatalf("%d keyframe requests with --layer", l.feedback.Load())
	}
	for _, args := range [][]string{{"--relay", e.Addr().String()}, {"--credentials", creds},
		{"--relay", e.Addr().String(), "--credentials", creds, "--duration", "0s"},
		{"--relay", e.Addr().String(), "--credentials", creds, "--layer", "3"}} {
		if err := relaySubscribe(context.Background(), &res, args); err == nil {
			t.Errorf("relay-subscribe %q: no error", args)
		}
	}
}
