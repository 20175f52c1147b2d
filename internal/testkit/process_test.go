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
