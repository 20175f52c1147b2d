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

// New creates a network namespace, bind-mounted at /run/netns/name when
// name is set (for "ip netns exec" and nsenter), without moving the
// calling goroutine's thread into it. The caller closes the handle.
func New(name string) (netns.NsHandle, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return netns.None(), err
	}
	defer orig.Close()
	// Creating a namespace moves the thread into it: Do moves it back.
	ns := netns.None()
	err = Do(orig, func() (err error) {
		if name == "" {
			ns, err = netns.New()
		} else {
			ns, err = netns.NewNamed(name)
		}
		return err
	})
	if err != nil {
		if ns.IsOpen() {
			ns.Close()
		}
		return netns.None(), err
	}
	return ns, nil
}
