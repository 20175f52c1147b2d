package relay

import (
	"net/netip"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/testkit"
)

// A blocked link carries nothing either way (counted), its probes see it
// down, the block holds across SetPeers, and unblocked it carries media
// again.
func TestBlock(t *testing.T) {
	a, b := streamAB(t)
	rtp := make([]byte, 200)
	send := func(n int) {
		for range n {
			a.e.Send(key, 0, rtp)
		}
	}
	send(10)
	testkit.WaitFor(t, 5*time.Second, "B receiving", func() bool { return b.sfu.media.Load() == 10 })
	testkit.WaitFor(t, 5*time.Second, "A's link to B up", func() bool { return a.e.LinkStats()[nB].Up })

	a.e.Block(nB, true)
	// SetPeers with the same peers (a controller's refresh) keeps the block.
	if err := a.e.SetPeers(map[NodeID]netip.AddrPort{nB: b.e.Addr()}); err != nil {
		t.Fatal(err)
	}
	send(10)
	testkit.WaitFor(t, 10*time.Second, "A's link to B seen down", func() bool { return !a.e.LinkStats()[nB].Up })
	if got := b.sfu.media.Load(); got != 10 {
		t.Fatalf("B received %d messages over a blocked link", got)
	}
	if d := a.metric(t, "traverse_relay_dropped_total", "reason", "blocked"); d < 10 {
		t.Fatalf("blocked drops %v, want >= 10", d)
	}
	a.e.Block(nB, false)
	send(10)
	testkit.WaitFor(t, 5*time.Second, "B receiving again", func() bool { return b.sfu.media.Load() > 10 })
}
