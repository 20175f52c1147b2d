// Package nsthread runs a function on an OS thread moved into a network
// namespace and moves the thread back afterwards: the one implementation of
// the lock-thread, switch, run, switch-back sequence the eBPF loader, the
// network labs and the load drivers need. Sockets the function opens stay
// in the namespace for their whole life; goroutines it starts do not run
// in the namespace.
package nsthread

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs f on the calling goroutine with its thread switched into ns. If
// the thread cannot be moved back, it stays locked, so that the runtime
// discards it with the goroutine rather than reuse a thread in the wrong
// namespace, and the error is returned with f's. It moves the thread back
// also when f panics or calls runtime.Goexit (t.Fatal).
func Do(ns netns.NsHandle, f func() error) (err error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter namespace: %w", err)
	}
	defer func() {
		if rerr := netns.Set(orig); rerr != nil {
			err = errors.Join(err, fmt.Errorf("return to the original namespace: %w", rerr))
			return
		}
		runtime.UnlockOSThread()
	}()
	return f()
}
