package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cluster/clustertest"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/netlab"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// nsMetric reads one metric of the admin server at addr inside h's
// namespace ("" when it cannot).
func nsMetric(h *netlab.Host, addr, name string) string {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(_ context.Context, network, a string) (net.Conn, error) { return h.Dial(network, a) }}}
	res, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return ""
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == name {
			return f[1]
		}
	}
	return ""
}

// TestBalancedGroupProcesses is seed E part 2 with the roles as processes:
// three "traverse sfu --group g1" processes, each in its own network
// namespace behind the lab's L4 balancer (nftables jhash DNAT of the
// client's address and port), all with the balancer's address as
// --public-ip; "traverse bus" and "traverse controller --cascade" in a
// namespace beside them; signal in the test process (its bus connection
// opened in that namespace). Four clients from four source addresses in
// two other namespaces join one room through signal; the balancer spreads
// them over the three processes (2, 1, 1: each serves at least one, as
// its sessions gauge and won claims show), and every client receives the
// three others' video and audio through the cascade.
func TestBalancedGroupProcesses(t *testing.T) {
	const port = 7882
	lab := clustertest.NewBalancedLab(t, 3, 2, port)
	ctl := lab.Lab.Host("ctl", lab.LB)
	if err := lab.Lab.Err(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	creds := filepath.Join(dir, "creds")
	nats := fmt.Sprintf("nats://%s:4222", ctl.Addr())
	start := func(h *netlab.Host, args ...string) *child {
		return startChildIn(t, h.Wrap(), args...)
	}
	busArgs := []string{"bus", "--listen", ctl.Addr().String() + ":4222", "--creds-dir", creds, "--jetstream-dir", filepath.Join(dir, "js"),
		"--admin", "127.0.0.1:9422", "--log-level", "warn"}
	for _, h := range lab.Nodes {
		busArgs = append(busArgs, "--node", h.Name())
	}
	start(ctl, busArgs...)
	testkit.WaitFor(t, 20*time.Second, "the bus ready", func() bool {
		return nsMetric(ctl, "127.0.0.1:9422", "traverse_bus_connections") != ""
	})
	start(ctl, "controller", "--nats", nats, "--nats-creds", filepath.Join(creds, "controller.creds"), "--id", "ctl-1",
		"--admin", "127.0.0.1:9790", "--cascade", "--log-level", "warn")
	secret := filepath.Join(dir, "cascade.secret")
	if err := os.WriteFile(secret, bytes.Repeat([]byte("g"), 40), 0o600); err != nil {
		t.Fatal(err)
	}
	vip := lab.Public()
	for _, h := range lab.Nodes {
		start(h, "sfu", "--nats", nats, "--nats-creds", filepath.Join(creds, "sfu-"+h.Name()+".creds"),
			"--udp", fmt.Sprintf("%s:%d", h.Addr(), port), "--public-ip", vip.String(), "--group", "g1",
			"--cascade-listen", h.Addr().String()+":7890", "--cascade-secret-file", secret,
			"--admin", "127.0.0.1:9094", "--log-level", "warn")
	}
	id, err := bus.LoadIdentity(filepath.Join(creds, "signal.creds"))
	if err != nil {
		t.Fatal(err)
	}
	var bc *bus.Client
	// Signal's bus connection opens in the lab, where the bus is.
	if err := ctl.Do(func() error {
		bc, err = bus.Connect(bus.Config{URLs: []string{nats}, Identity: id, Name: "signal"}, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bc.Close() })
	testkit.WaitFor(t, 30*time.Second, "the controller to lead", func() bool {
		return nsMetric(ctl, "127.0.0.1:9790", "traverse_controller_leader") == "1"
	})
	be, wsURL := lab.Signal(t, bc, "g1")

	want := []int{0, 1, 2, 0}
	expect := clustertest.Expect(want, len(lab.Nodes))
	clients := lab.DialSpread(t, want, "lobby", wsURL, loadgen.DemoTokens(wsURL))
	testkit.WaitFor(t, 15*time.Second, "each sfu process serving the clients the balancer sends it", func() bool {
		for i, h := range lab.Nodes {
			if nsMetric(h, "127.0.0.1:9094", "traverse_sfu_sessions") != fmt.Sprint(expect[i]) {
				return false
			}
		}
		return true
	})
	clustertest.WaitEveryoneReceives(t, clients)
	if n := be.RefusedClaims(); n != 0 {
		t.Errorf("signal refused %d claims; every client has one address", n)
	}
	for i, h := range lab.Nodes {
		won := nsMetric(h, "127.0.0.1:9094", `traverse_sfu_group_claims_total{result="won"}`)
		if won != fmt.Sprint(expect[i]) {
			t.Errorf("sfu %s won %s claims, want %d", h.Name(), won, expect[i])
		}
		t.Logf("sfu %s: sessions %d, relayed messages delivered %s", h.Name(), expect[i],
			nsMetric(h, "127.0.0.1:9094", "traverse_relay_delivered_total"))
	}
}
