package p2plab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

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

func buildEnv(t *testing.T, kinds []string) *Env {
	t.Helper()
	l := netlab.New(t)
	e, err := Build(l, kinds)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.StartServers(exec.Command(os.Args[0], "-test.run=^$")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("server helper: %v", err)
		}
	})
	return e
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
