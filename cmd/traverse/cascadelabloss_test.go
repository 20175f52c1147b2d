package main

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// lossRerouteGoal is issue 13's figure: routes leave a link whose loss
// rose from 0 to 30 % within 5 s. The test logs the time it took and
// fails past lossRerouteDeadline, looser for a loaded 2-core machine
// (a process stalled for a second now and then, reports delayed: 8.5 s
// once at load average 8.6), as TestCascadeLab's 15 s for a cut link.
const (
	lossRerouteGoal     = 5 * time.Second
	lossRerouteDeadline = 15 * time.Second
)

// TestCascadeLabLossMovesRoutes: the lab's cascade (startCascadeLab,
// three "traverse sfu" processes in their own namespaces) with a pion
// publisher on a and pion subscribers on b and c, c's media going a -> c.
// 30 % of the UDP packets between a and c are then lost both ways
// (netlab LoseUDP on a's eth0): the controller moves a's route to c and
// c's route to a through b (traverse_controller_cascade_direct_routes
// toward a and c from 2 to 1; traverse_controller_cascade_route_changes_total
// by destination, one change each) and b forwards a's media to c, within
// lossRerouteGoal (logged; the test fails past lossRerouteDeadline); c's
// subscriber keeps receiving. The loss removed, both routes come back to
// a-c, one change each, and nothing moves again during a 3 s watch: at
// most one change each way. (Whether b then stops forwarding is the
// distribution tree's choice, logged: c is as near b, a holder, as a.)
func TestCascadeLabLossMovesRoutes(t *testing.T) {
	start := time.Now()
	_, nodes, cs := startCascadeLab(t, false)
	var videoC atomic.Int64
	cs.dial(t, "a", loadgen.ClientConfig{Room: "loss", Identity: "pub", Publish: true, VideoBitrate: 500_000, PacketSize: 1000})
	subB := cs.dial(t, "b", loadgen.ClientConfig{Room: "loss", Identity: "sub-b", Subscribe: true})
	subC := cs.dial(t, "c", loadgen.ClientConfig{Room: "loss", Identity: "sub-c", Subscribe: true,
		OnVideo: func([]byte, time.Time) { videoC.Add(1) }})
	receivesAV(t, "b", subB)
	receivesAV(t, "c", subC)
	t.Logf("cascade up and media flowing to b and c %v after start", time.Since(start).Round(time.Millisecond))

	forwarded := func() float64 { return cs.metric(1, "traverse_relay_forwarded_total") }
	ctl := func(name, dst string) float64 {
		var f float64
		_, _ = fmt.Sscan(metricValue(cs.ctlAdmin, name+`{dst="`+dst+`"}`), &f)
		return f
	}
	changes := func() (toA, toB, toC float64) {
		const n = "traverse_controller_cascade_route_changes_total"
		return ctl(n, "a"), ctl(n, "b"), ctl(n, "c")
	}
	// direct: how many nodes reach a and c over their own link (2 each
	// when a and c route to each other directly, 1 when through b).
	direct := func() (toA, toC float64) {
		const n = "traverse_controller_cascade_direct_routes"
		return ctl(n, "a"), ctl(n, "c")
	}
	// c's media goes a -> c, or, when the tree joined c to b (a holder,
	// as near as a: which is nearer when c joins is the probes' noise,
	// and the tree's hysteresis keeps it), a -> b -> c from the start: b's
	// forwarding shows nothing then, the route changes still do.
	viaA := forwarded() < 100
	if !viaA {
		t.Logf("NOTE: the tree sends c's media through b from the start (b forwarded %v messages): b's forwarding is not watched", forwarded())
	}
	// The first tables settled: no route change for 3 s (past the 2 s
	// hold), so that what follows is the loss's doing.
	settled := struct {
		n  [3]float64
		at time.Time
	}{at: time.Now()}
	testkit.WaitFor(t, 20*time.Second, "the routes settled (no change for 3 s), a and c routing to each other directly", func() bool {
		if dA, dC := direct(); dA != 2 || dC != 2 {
			return false
		}
		var n [3]float64
		n[0], n[1], n[2] = changes()
		if n != settled.n {
			settled.n, settled.at = n, time.Now()
		}
		return time.Since(settled.at) >= 3*time.Second
	})
	a0, b0, c0 := changes()
	if a0 == 0 || c0 == 0 {
		t.Fatalf("route changes toward a %v, c %v before the loss: the metric does not count the first tables", a0, c0)
	}

	// 30 % loss on a-c, both ways.
	f0, v0 := forwarded(), videoC.Load()
	lossAt := time.Now()
	if err := nodes[0].LoseUDP(nodes[2].Addr(), 30); err != nil {
		t.Fatal(err)
	}
	var routed, forwarding time.Duration
	if !testkit.Eventually(lossRerouteDeadline, func() bool {
		if dA, dC := direct(); routed == 0 && dA == 1 && dC == 1 {
			routed = time.Since(lossAt)
		}
		if forwarding == 0 && forwarded() >= f0+10 {
			forwarding = time.Since(lossAt)
		}
		return routed > 0 && (forwarding > 0 || !viaA)
	}) {
		toA, toB, toC := changes()
		t.Fatalf("%v after the loss began: route changes toward a %v, b %v, c %v; b forwarded %v (routes moved %v, b forwarding %v)",
			lossRerouteDeadline, toA-a0, toB-b0, toC-c0, forwarded()-f0, routed, forwarding)
	}
	testkit.WaitFor(t, 10*time.Second, "c's subscriber receiving 100 more video packets through b", func() bool {
		return videoC.Load() >= v0+100
	})
	fwdNote := ""
	if !viaA {
		fwdNote = " (through b already)"
	}
	t.Logf("a-c losing 30 %% both ways: routes moved %v and b forwards to c %v%s after the loss began (goal %v); c's subscriber received %d video packets since",
		routed.Round(time.Millisecond), forwarding.Round(time.Millisecond), fwdNote, lossRerouteGoal, videoC.Load()-v0)
	if routed > lossRerouteGoal || (viaA && forwarding > lossRerouteGoal) {
		t.Logf("NOTE: past the %v goal (the machine is loaded?)", lossRerouteGoal)
	}
	if toA, toB, toC := changes(); toA != a0+1 || toC != c0+1 {
		t.Fatalf("route changes during the loss toward a %v, c %v: want one each (and %v toward b)", toA-a0, toC-c0, toB-b0)
	}

	// The loss removed: the routes come back once.
	v1 := videoC.Load()
	backAt := time.Now()
	if err := nodes[0].LoseUDP(nodes[2].Addr(), 0); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 25*time.Second, "a's and c's routes to each other back on a-c", func() bool {
		dA, dC := direct()
		return dA == 2 && dC == 2
	})
	back := time.Since(backAt)
	// Watch 3 s more: no route moves again. b may go on forwarding a's
	// media to c: the tree keeps c on b, a holder (b has subscribers of
	// its own) as near as a now, by its hysteresis (docs/cascade.md,
	// distribution trees); it is logged.
	f1 := forwarded()
	watchEnd := time.Now().Add(3 * time.Second)
	tk := time.NewTicker(250 * time.Millisecond)
	defer tk.Stop()
	for ; time.Now().Before(watchEnd); <-tk.C {
		if dA, dC := direct(); dA != 2 || dC != 2 {
			t.Fatalf("after the routes came back: %v nodes route to a directly, %v to c: want 2 each", dA, dC)
		}
		if toA, toB, toC := changes(); toA != a0+2 || toC != c0+2 {
			t.Fatalf("route changes since the loss began toward a %v, c %v: want two each (away and back); and %v toward b",
				toA-a0, toC-c0, toB-b0)
		}
	}
	stray := forwarded() - f1
	if _, toB, _ := changes(); toB != b0 {
		t.Logf("NOTE: %v route changes toward b since the loss began (not a-c's routes: b's links were clean)", toB-b0)
	}
	t.Logf("loss removed: routes back on a-c %v later (one change each way); b forwarded %v messages in the 3 s watch after (the tree's choice); c's subscriber received %d video packets since the loss ended",
		back.Round(time.Millisecond), stray, videoC.Load()-v1)
	if videoC.Load() < v1+100 {
		t.Errorf("c's subscriber received %d video packets after the loss ended", videoC.Load()-v1)
	}
}
