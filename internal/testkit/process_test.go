package testkit

import (
	"os/exec"
	"testing"
	"time"
)

func TestAwaitExit(t *testing.T) {
	done := exec.Command("true")
	if err := done.Start(); err != nil {
		t.Skipf("no true(1): %v", err)
	}
	if err, ok := AwaitExit(done, Exited(done), 10*time.Second); !ok || err != nil {
		t.Errorf("true: err %v, exited %v", err, ok)
	}
	stuck := exec.Command("sleep", "30")
	if err := stuck.Start(); err != nil {
		t.Skipf("no sleep(1): %v", err)
	}
	start := time.Now()
	if _, ok := AwaitExit(stuck, Exited(stuck), 50*time.Millisecond); ok {
		t.Error("sleep 30 reported as exited within 50 ms")
	}
	if stuck.ProcessState == nil {
		t.Error("the stuck process was not reaped")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("AwaitExit took %v to kill", d)
	}
}

// TestAwaitExitAfterEarlyRead: a readiness wait that read the child's exit
// first does not leave AwaitExit (a cleanup's) waiting forever.
func TestAwaitExitAfterEarlyRead(t *testing.T) {
	cmd := exec.Command("false")
	if err := cmd.Start(); err != nil {
		t.Skipf("no false(1): %v", err)
	}
	exited := Exited(cmd)
	if err := <-exited; err == nil {
		t.Fatal("false(1) exited without an error")
	}
	done := make(chan bool, 1)
	go func() { _, ok := AwaitExit(cmd, exited, 50*time.Millisecond); done <- ok }()
	select {
	case ok := <-done:
		if !ok {
			t.Error("an exited child reported as still running")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("AwaitExit waits forever once the exit was read elsewhere")
	}
}
