package controller

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/traverse-rtc/traverse/internal/cascade/routes"
)

// TestCascadeRouteChangesByDestination: traverse_controller_cascade_route_changes_total
// counts, per destination, the next hops added, moved and removed, and
// traverse_controller_cascade_direct_routes the nodes reaching it over
// their own link to it: the
// first tables add two routes toward each of three nodes; a-c losing 30 %
// moves a's route to c and c's route to a through b after the hold, one
// change each; a-c recovering moves them back, one each again; a node
// that leaves loses its series.
func TestCascadeRouteChangesByDestination(t *testing.T) {
	v, err := newCascadeView(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	const a, b, c = 1, 2, 3
	for id, name := range map[uint32]string{a: "a", b: "b", c: "c"} {
		v.router.AddNode(routes.NodeID(id))
		v.inRouter[id] = name
	}
	link := func(x, y routes.NodeID, loss float64) {
		m := routes.Metrics{RTT: time.Millisecond, Loss: loss, Up: true}
		v.router.Report(x, y, m)
		v.router.Report(y, x, m)
	}
	setAC := func(loss float64) {
		link(a, b, 0)
		link(b, c, 0)
		link(a, c, loss)
	}
	now := time.Unix(1_000_000, 0)
	// step is cascadeStep's route part.
	step := func() {
		v.computeRoutes(now, false)
		now = now.Add(cascadeTick)
	}
	want := func(when string, wa, wb, wc float64, direct [3]float64) {
		t.Helper()
		for i, dst := range []string{"a", "b", "c"} {
			if got, w := testutil.ToFloat64(v.routeChanges.WithLabelValues(dst)), [3]float64{wa, wb, wc}[i]; got != w {
				t.Errorf("%s: %v route changes toward %s, want %v", when, got, dst, w)
			}
			if got := testutil.ToFloat64(v.directRoutes.WithLabelValues(dst)); got != direct[i] {
				t.Errorf("%s: %v direct routes toward %s, want %v", when, got, dst, direct[i])
			}
		}
	}
	setAC(0)
	v.computeRoutes(now, true)
	now = now.Add(cascadeTick)
	want("first tables", 2, 2, 2, [3]float64{2, 2, 2})
	if via, _ := v.router.NextHop(a, c); via != c {
		t.Fatalf("a's route to c via %d, want direct", via)
	}
	setAC(0.3)
	for range 10 { // 5 s: past the 2 s hold
		step()
	}
	if via, _ := v.router.NextHop(a, c); via != b {
		t.Fatalf("a's route to c via %d with a-c losing 30 %%, want b", via)
	}
	want("a-c losing 30 %", 3, 2, 3, [3]float64{1, 2, 1})
	setAC(0)
	for range 10 {
		step()
	}
	if via, _ := v.router.NextHop(a, c); via != c {
		t.Fatalf("a's route to c via %d after a-c recovered, want direct", via)
	}
	want("a-c recovered", 4, 2, 4, [3]float64{2, 2, 2})
	// c leaves: its series goes (cascadeStep's removal).
	v.removeNode(c)
	step()
	if n := testutil.CollectAndCount(v.routeChanges); n != 2 {
		t.Errorf("%d route-change series after c left, want 2 (a, b)", n)
	}
	if n := testutil.CollectAndCount(v.directRoutes); n != 2 {
		t.Errorf("%d direct-route series after c left, want 2 (a, b)", n)
	}
	for _, dst := range []string{"a", "b"} {
		if got := testutil.ToFloat64(v.directRoutes.WithLabelValues(dst)); got != 1 {
			t.Errorf("after c left: %v direct routes toward %s, want 1", got, dst)
		}
	}
}
