package main

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/logging/logtest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestMain lets tests run this test binary as the traverse command in
// child processes (TRAVERSE_TEST_MAIN=1, the arguments as traverse's), so
// that roles are separate OS processes of the code under test (the
// platform, controller and failover tests).
func TestMain(m *testing.M) {
	if os.Getenv("TRAVERSE_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child is a traverse command running as a process of its own.
type child struct {
	cmd    *exec.Cmd
	exited <-chan error
	reaped bool // exited was read (kill)
	// The child's stdout and stderr (c is their writer).
	logtest.Buffer
}

func (c *child) output() string { return c.String() }

// startChild starts "traverse args..." (this test binary in child mode);
// the test's end stops it with SIGTERM unless it was killed.
func startChild(t *testing.T, args ...string) *child {
	t.Helper()
	return startChildIn(t, nil, args...)
}

// startChildIn is startChild under wrap, a command prefix that ends by
// executing its arguments in place ("nsenter --net=PATH --": the child
// runs in that network namespace, and its PID is traverse's).
func startChildIn(t *testing.T, wrap []string, args ...string) *child {
	t.Helper()
	argv := append(append(append([]string(nil), wrap...), os.Args[0]), args...)
	return startProgram(t, "traverse "+args[0], append(os.Environ(), "TRAVERSE_TEST_MAIN=1"), argv...)
}

// startProgram starts argv (with the environment env, nil: this
// process's) as a child named name in failure messages; the test's end
// stops it with SIGTERM unless it was killed. A peer the benchmarks
// measure against (udpfwd, rtpengine) starts this way.
func startProgram(t *testing.T, name string, env []string, argv ...string) *child {
	t.Helper()
	c := &child{cmd: exec.Command(argv[0], argv[1:]...)}
	c.cmd.Env = env
	c.cmd.Stdout, c.cmd.Stderr = c, c
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.exited = testkit.Exited(c.cmd)
	t.Cleanup(func() {
		if c.reaped {
			return
		}
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		if _, ok := testkit.AwaitExit(c.cmd, c.exited, 10*time.Second); !ok {
			t.Errorf("%s did not stop on SIGTERM", name)
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, c.output())
		}
	})
	return c
}

// kill ends the child with SIGKILL (no clean shutdown) and waits for it.
func (c *child) kill(t *testing.T) {
	t.Helper()
	_ = c.cmd.Process.Kill()
	c.reaped = true
	if _, ok := testkit.AwaitExit(c.cmd, c.exited, 5*time.Second); !ok {
		t.Fatal("killed child did not exit")
	}
}
