package main

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/testkit"
)

// metricValue returns the value of the unlabelled metric name on the
// admin listener at addr ("" when absent or unreachable).
func metricValue(addr, name string) string {
	code, body, err := httpGet("http://" + addr + "/metrics")
	if err != nil || code != 200 {
		return ""
	}
	for _, line := range strings.Split(body, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == name {
			return f[1]
		}
	}
	return ""
}

// busCluster starts three "traverse bus" processes routed together
// (the first alone, so that it writes the credentials the others load).
type busCluster struct {
	creds string
	urls  []string
	procs []*child
}

func startBusCluster(t *testing.T) *busCluster {
	t.Helper()
	base := testkit.FreePorts(t, 9, netip.MustParseAddr("127.0.0.1"))
	bc := &busCluster{creds: filepath.Join(t.TempDir(), "creds")}
	var routes []string
	for i := range 3 {
		bc.urls = append(bc.urls, fmt.Sprintf("nats://127.0.0.1:%d", base+i))
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", base+3+i))
	}
	for i := range 3 {
		var peers []string
		for j, r := range routes {
			if j != i {
				peers = append(peers, r)
			}
		}
		admin := fmt.Sprintf("127.0.0.1:%d", base+6+i)
		p := startChild(t, "bus", "--listen", strings.TrimPrefix(bc.urls[i], "nats://"),
			"--cluster-listen", strings.TrimPrefix(routes[i], "nats://"), "--routes", strings.Join(peers, ","),
			"--creds-dir", bc.creds, "--jetstream-dir", t.TempDir(), "--server-name", fmt.Sprintf("bus%d", i+1),
			"--admin", admin, "--log-level", "warn")
		bc.procs = append(bc.procs, p)
		if i == 0 {
			waitReady(t, admin, 20*time.Second, p.exited, p.output)
		}
	}
	return bc
}

// TestControllerProcesses: three "traverse bus" processes form a cluster;
// two "traverse controller" processes elect one leader; SIGKILL on the
// leader makes the other lead within 5 s (measured); killing one bus
// process then leaves the leader leading (its lease lives in R3 buckets).
func TestControllerProcesses(t *testing.T) {
	bc := startBusCluster(t)
	ports := testkit.FreePorts(t, 2, netip.MustParseAddr("127.0.0.1"))
	var ctls []*child
	var admins []string
	for i := range 2 {
		admin := fmt.Sprintf("127.0.0.1:%d", ports+i)
		admins = append(admins, admin)
		ctls = append(ctls, startChild(t, "controller", "--nats", strings.Join(bc.urls, ","),
			"--nats-creds", filepath.Join(bc.creds, "controller.creds"), "--id", fmt.Sprintf("ctl-%d", i+1),
			"--admin", admin, "--log-level", "warn"))
	}
	leaderIdx := -1
	testkit.WaitFor(t, 30*time.Second, "one controller leads", func() bool {
		n := 0
		for i, a := range admins {
			if metricValue(a, "traverse_controller_leader") == "1" {
				n, leaderIdx = n+1, i
			}
		}
		return n == 1
	})
	other := 1 - leaderIdx
	start := time.Now()
	ctls[leaderIdx].kill(t)
	testkit.WaitFor(t, 5*time.Second, "the other controller leads", func() bool {
		return metricValue(admins[other], "traverse_controller_leader") == "1"
	})
	t.Logf("controller takeover after SIGKILL: %v", time.Since(start).Round(time.Millisecond))

	// One bus process of three dies (SIGKILL: no leadership handed over
	// by the server): the buckets are R3, so a controller leads again once
	// the lease's stream has elected a new leader (nats-server's Raft
	// election timeout, 4-9 s).
	revAt := func(a string) float64 {
		v, _ := strconv.ParseFloat(metricValue(a, "traverse_controller_lease_revision"), 64)
		return v
	}
	before := revAt(admins[other])
	bc.procs[2].kill(t)
	start = time.Now()
	testkit.WaitFor(t, 15*time.Second, "the lease renewed twice with one bus server of three dead", func() bool {
		return revAt(admins[other]) >= before+2
	})
	t.Logf("leader after a bus server's SIGKILL: %v", time.Since(start).Round(time.Millisecond))
}
