package controller_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cluster/clustertest"
	"github.com/traverse-rtc/traverse/internal/controller"
	"github.com/traverse-rtc/traverse/internal/metricstest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestNodeCheckTakesInQueuedAnnouncements: a node is judged by the last
// announcement the controller received, also when its loop was busy (a
// lease step stalled on a bucket whose stream elects a leader) and had not
// handled it yet. n1 keeps announcing into the queue, which only the
// checks take in; n2 falls silent: n2 alone is declared dead. (A check
// that judged by the handled announcements alone saw neither here; in
// TestPlatformProcesses it once declared every node dead 2.4 s after a
// bus server's SIGKILL.)
func TestNodeCheckTakesInQueuedAnnouncements(t *testing.T) {
	c := clustertest.Start(t, 1)
	reg := prometheus.NewRegistry()
	ctl, err := controller.New(controller.Config{ID: "ctl", Bus: c.Config("ctl", bus.RoleController, ""),
		NodeDeadAfter: time.Second, Registerer: reg, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Close() })
	ctx := context.Background()
	testkit.WaitFor(t, 10*time.Second, "the lease", func() bool {
		ctl.Step(ctx)
		return ctl.Leading() != 0
	})
	announce := func(node string) {
		ctl.Queue(bus.NodeAnnounce{Node: node, Region: "eu", UDP: "192.0.2.1:7882", Time: time.Now()}, time.Now())
	}
	announce("n1")
	announce("n2")
	ctl.Check(ctx)
	testkit.WaitFor(t, 5*time.Second, "n2 declared dead", func() bool {
		announce("n1")
		ctl.Check(ctx)
		return metricstest.Value(t, reg, "traverse_controller_nodes_dead_total") >= 1
	})
	if dead, live := metricstest.Value(t, reg, "traverse_controller_nodes_dead_total"), metricstest.Value(t, reg, "traverse_controller_nodes"); dead != 1 || live != 1 {
		t.Fatalf("%v nodes declared dead, %v live; want n2 dead and n1 live", dead, live)
	}
}
