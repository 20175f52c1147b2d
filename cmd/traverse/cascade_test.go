package main

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestCascadeProcesses: rooms span SFU processes. Three "traverse bus"
// processes, a "traverse controller --cascade", three "traverse sfu" with
// relay ports, a "traverse signal --cascade" placing by load (capacity 2:
// one participant is half a node). A publisher joins and lands on a; the
// next client, of the same room, on b (less loaded by more than the
// room's bonus), the third on c. Both subscribers receive the publisher's
// video and audio, relayed from a's process to b's and c's.
func TestCascadeProcesses(t *testing.T) {
	bc := startBusCluster(t, "--node", "a", "--node", "b", "--node", "c")
	nats := strings.Join(bc.urls, ",")
	base := testkit.FreePorts(t, 16, netip.MustParseAddr("127.0.0.1"))
	port := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", base+i) }
	secret := filepath.Join(t.TempDir(), "cascade.secret")
	if err := os.WriteFile(secret, bytes.Repeat([]byte("x"), 40), 0o600); err != nil {
		t.Fatal(err)
	}
	startChild(t, "controller", "--nats", nats, "--nats-creds", filepath.Join(bc.creds, "controller.creds"),
		"--id", "ctl-1", "--admin", port(0), "--cascade", "--log-level", "warn")
	var admins []string
	for i, n := range []string{"a", "b", "c"} {
		admins = append(admins, port(3+4*i))
		startChild(t, "sfu", "--nats", nats, "--nats-creds", filepath.Join(bc.creds, "sfu-"+n+".creds"),
			"--udp", port(1+4*i), "--tcp", port(2+4*i), "--admin", port(3+4*i), "--cascade-listen", port(4+4*i),
			"--cascade-secret-file", secret, "--log-level", "warn")
	}
	const key = "0123456789abcdef-key"
	http, sigAdmin := port(13), port(14)
	p := startChild(t, "signal", "--nats", nats, "--nats-creds", filepath.Join(bc.creds, "signal.creds"),
		"--http", http, "--admin", sigAdmin, "--token-key", key, "--no-web", "--node-capacity", "2", "--cascade",
		"--log-level", "warn")
	waitReady(t, sigAdmin, 30*time.Second, p.exited, p.output)
	testkit.WaitFor(t, 30*time.Second, "the controller leads", func() bool {
		return metricValue(port(0), "traverse_controller_leader") == "1"
	})
	api, err := loadgen.NewAPI(false, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	token := func(_ context.Context, room, identity string) (string, error) {
		return signal.MintToken([]byte(key), signal.Claims{Room: room, Identity: identity, Publish: true, Subscribe: true,
			Expires: time.Now().Add(time.Hour).Unix()})
	}
	dial := func(want string, cfg loadgen.ClientConfig) *loadgen.Client {
		t.Helper()
		testkit.WaitFor(t, 15*time.Second, "signal routing the next client of r1 to "+want, func() bool {
			return routeOf(http, "10.0.0.1", "r1") == want
		})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		sig := loadgen.NewWSSignaler("ws://"+http+"/ws", token)
		cl, err := loadgen.Dial(ctx, api, sig, cfg)
		if err != nil {
			t.Fatalf("dial %s: %v", cfg.Identity, err)
		}
		t.Cleanup(func() { cl.Close() })
		if sig.Node() != want {
			t.Fatalf("%s joined %s, want %s", cfg.Identity, sig.Node(), want)
		}
		return cl
	}
	dial("a", loadgen.ClientConfig{Room: "r1", Identity: "pub", Publish: true, VideoBitrate: 300_000})
	subB := dial("b", loadgen.ClientConfig{Room: "r1", Identity: "sub-b", Subscribe: true})
	subC := dial("c", loadgen.ClientConfig{Room: "r1", Identity: "sub-c", Subscribe: true})
	for name, sub := range map[string]*loadgen.Client{"b": subB, "c": subC} {
		testkit.WaitFor(t, 30*time.Second, "the subscriber on "+name+" receiving a's video and audio", func() bool {
			v, au := sub.Receiving(50)
			return v >= 1 && au >= 1
		})
	}
	for i, n := range []string{"b", "c"} {
		d, _ := strconv.ParseFloat(metricValue(admins[i+1], "traverse_relay_delivered_total"), 64)
		if d < 100 {
			t.Errorf("node %s delivered %v relayed messages", n, d)
		}
	}
}
