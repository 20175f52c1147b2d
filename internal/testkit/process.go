package testkit

import (
	"os/exec"
	"time"
)

// Exited starts waiting for cmd, already started, and returns the channel
// that receives its Wait error. Tests that must also notice an early exit
// (while waiting for readiness) hold on to it.
func Exited(cmd *exec.Cmd) <-chan error {
	c := make(chan error, 1)
	go func() {
		c <- cmd.Wait()
		// Closed after the one value: whoever reads it first (a readiness
		// wait that sees the child stop early) does not leave a later
		// reader (AwaitExit in a cleanup) waiting forever.
		close(c)
	}()
	return c
}

// AwaitExit waits up to timeout for cmd to exit, as reported on exited
// (from Exited), and returns its Wait error with ok true. A process still
// running at the deadline is killed and reaped, and ok is false: a test
// never leaves a child behind, however it fails.
func AwaitExit(cmd *exec.Cmd, exited <-chan error, timeout time.Duration) (err error, ok bool) {
	select {
	case err := <-exited:
		return err, true
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-exited
		return nil, false
	}
}
