package browsertest

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// netnsEnv marks the re-run of a test inside its own network namespace.
const netnsEnv = "TRAVERSE_BROWSERTEST_NETNS"

// SkipUnlessAvailable skips a browser test under -short or when Chromium
// is not installed.
func SkipUnlessAvailable(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("browser test skipped with -short")
	}
	if _, err := os.Stat(DefaultPath); err != nil {
		t.Skip("chromium is not installed")
	}
}

// Here is the start of every browser test: it skips t where no browser
// runs (SkipUnlessAvailable) and, as root, re-runs t in a network namespace
// of its own (Isolated). It reports whether the test's body is to run in
// this process; false means the isolated child already ran it.
func Here(t testing.TB) bool {
	t.Helper()
	SkipUnlessAvailable(t)
	return !Isolated(t)
}

// Isolated re-runs the calling test inside a new network namespace with
// only loopback up (unshare --net), so that the browser and the servers it
// talks to can reach nothing else, and reports true when it did: the
// caller then returns, the child did the work. It returns false inside the
// child, and when not root or without unshare (the test then runs on the
// host's loopback).
func Isolated(t testing.TB) bool {
	t.Helper()
	if os.Getenv(netnsEnv) == "1" {
		t.Log("running inside a private network namespace (lo only)")
		return false
	}
	unshare, err := exec.LookPath("unshare")
	if os.Geteuid() != 0 || err != nil {
		t.Log("not root or no unshare: running on the host's loopback")
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, unshare, "--net", "--", "sh", "-c", `ip link set lo up && exec "$0" "$@"`,
		os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1", "-test.timeout=3m")
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "_test.go") || strings.HasPrefix(strings.TrimSpace(line), "---") || strings.Contains(line, "panic") {
			t.Log(strings.TrimSpace(line))
		}
	}
	if err != nil {
		t.Fatalf("the test in its network namespace failed: %v", err)
	}
	return true
}
