package p2plab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/client/p2p"
	"github.com/traverse-rtc/traverse/internal/netlab"
)

func TestMain(m *testing.M) {
	if ok, err := ServeHelper(); ok {
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func buildEnv(t *testing.T, kinds []string) *Env { return buildEnvWith(t, kinds, Extras{}) }

func buildEnvWith(t *testing.T, kinds []string, x Extras) *Env {
	t.Helper()
	l := netlab.New(t)
	e, err := BuildWith(l, kinds, x)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("server helper: %v", err)
		}
	})
	if err := e.StartServers(exec.Command(os.Args[0], "-test.run=^$")); err != nil {
		t.Fatal(err)
	}
	if err := e.StartExtras(); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestRelayNodeBeforeTURN: two hosts behind random symmetric NATs cannot
// go direct (theory and TestMatrixSubset); with two relay nodes on the lab
// internet, the nearest of which (their region) peer a's firewall blocks,
// both abandon it for the next, which carries the call: path relay-node,
// no TURN allocation on either side. Then the relay node's path keeps
// working under a flow in both directions.
func TestRelayNodeBeforeTURN(t *testing.T) {
	k := "symmetric-random"
	e := buildEnvWith(t, []string{k}, Extras{RelayNodes: 2})
	if err := e.BlockRelayNode("a", k, 0); err != nil {
		t.Fatal(err)
	}
	r := e.Connect(context.Background(), k, k, 20*time.Second)
	t.Logf("%+v", r)
	if !r.OK || r.Path != p2p.PathRelayNode || r.TURN {
		t.Fatalf("run %+v: want path relay-node without TURN", r)
	}
	if r.RelayNodeUsed != 2 {
		t.Errorf("relay node used: offer position %d, want 2 (node0 unreachable from a)", r.RelayNodeUsed)
	}
	if x := e.expect(k, k); x != p2p.PathRelayNode {
		t.Errorf("expect(%s, %s) = %s", k, k, x)
	}
}

// TestPortMapOpensDirect: a random symmetric NAT calling a port-restricted
// cone cannot go direct (TURN in TestMatrixSubset); with miniupnpd on the
// cone's NAT, the callee maps its port and the caller's path goes direct
// to the callee's "mapped" candidate, both directions of the call.
func TestPortMapOpensDirect(t *testing.T) {
	e := buildEnvWith(t, []string{"symmetric-random", "eim-apdf"}, Extras{Miniupnpd: []string{"eim-apdf"}})
	for _, ab := range [][2]string{{"symmetric-random", "eim-apdf"}, {"eim-apdf", "symmetric-random"}} {
		r := e.Connect(context.Background(), ab[0], ab[1], 20*time.Second)
		t.Logf("%s -> %s: %+v", ab[0], ab[1], r)
		// The caller behind the mapping reaches the callee at the
		// address the callee's probes came from (peer-reflexive).
		want := "mapped"
		if ab[0] == "eim-apdf" {
			want = "prflx"
		}
		if !r.OK || r.Path != p2p.PathDirect || r.Candidate != want || r.TURN {
			t.Fatalf("%s -> %s: %+v: want direct to the %s candidate, no TURN", ab[0], ab[1], r, want)
		}
		if x := e.expect(ab[0], ab[1]); x != p2p.PathDirect {
			t.Errorf("expect(%s, %s) = %s", ab[0], ab[1], x)
		}
	}
}

// TestUpgradeFromRelayNode: with the direct path blocked the call starts
// on a relay node (not TURN); once the path opens, the flow moves to
// direct within 5 s, nothing lost or reordered.
func TestUpgradeFromRelayNode(t *testing.T) {
	e := buildEnvWith(t, []string{"eim-apdf"}, Extras{RelayNodes: 1})
	for i := range 2 {
		r := e.Upgrade(context.Background(), "eim-apdf", "eim-apdf", 2*time.Millisecond, 700*time.Millisecond)
		t.Logf("run %d: %+v", i+1, r)
		if !r.OK || r.From != p2p.PathRelayNode || r.Upgrade > 5*time.Second || r.Lost != 0 || r.Reordered != 0 || r.Received != r.Sent {
			t.Fatalf("run %d: %+v", i+1, r)
		}
	}
}

// TestMatrixSubset is the CI subset of "traverse lab matrix": a
// port-restricted cone, a sequential and a random symmetric NAT and a
// UDP-blocked host, every ordered pair once; each must connect, on the
// path theory (with port prediction) predicts or a better one.
func TestMatrixSubset(t *testing.T) {
	kinds := []string{"eim-apdf", "symmetric-seq", "symmetric-random", "udp-blocked"}
	e := buildEnv(t, kinds)
	var log strings.Builder
	res := e.Matrix(context.Background(), kinds, 1, &log)
	var tb strings.Builder
	_ = Table(&tb, res)
	t.Logf("\n%s\n%s", log.String(), tb.String())
	for _, r := range res {
		if !r.AsExpected() {
			t.Errorf("%s -> %s: %s (%d/%d), expected %s", r.A, r.B, r.Paths(), r.OK(), len(r.Runs), r.Expect)
		}
	}
	_ = time.Second
}

// TestUpgradeLab blocks the direct path between two port-restricted cone
// hosts with nftables, connects them through TURN, opens the path and
// checks, over repeated runs, that the flow moves to direct within 5 s
// with no datagram lost or reordered.
func TestUpgradeLab(t *testing.T) {
	e := buildEnv(t, []string{"eim-apdf"})
	var ups []time.Duration
	for i := range 3 {
		r := e.Upgrade(context.Background(), "eim-apdf", "eim-apdf", 2*time.Millisecond, 700*time.Millisecond)
		t.Logf("run %d: %+v", i+1, r)
		if !r.OK || r.Upgrade > 5*time.Second || r.Lost != 0 || r.Reordered != 0 || r.Received != r.Sent {
			t.Fatalf("run %d: %+v", i+1, r)
		}
		ups = append(ups, r.Upgrade)
	}
	t.Logf("upgrade p50 %v max %v", Quantile(ups, 0.5), Quantile(ups, 1))
}
