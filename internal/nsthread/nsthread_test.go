package nsthread_test

import (
	"errors"
	"os"
	"runtime"
	"testing"

	"github.com/traverse-rtc/traverse/internal/nsthread"
	"github.com/vishvananda/netns"
)

// current returns the calling thread's namespace, read on a locked thread.
func current(t *testing.T) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	h, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// newNS makes a namespace without leaving the calling thread in it.
func newNS(t *testing.T) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	if err := netns.Set(orig); err != nil {
		panic(err) // the thread is stuck in ns: do not let the runtime reuse it
	}
	return ns
}

func TestDo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	orig := current(t)
	ns := newNS(t)
	errF := errors.New("f failed")
	err := nsthread.Do(ns, func() error {
		h, err := netns.Get()
		if err != nil {
			return err
		}
		defer h.Close()
		if !h.Equal(ns) {
			t.Errorf("f ran in %v, want %v", h, ns)
		}
		return errF
	})
	if !errors.Is(err, errF) {
		t.Fatalf("Do returned %v, want f's error", err)
	}
	if h := current(t); !h.Equal(orig) {
		t.Fatalf("after Do the goroutine is in %v, want %v", h, orig)
	}
	if err := nsthread.Do(netns.None(), func() error {
		t.Error("f ran although the namespace could not be entered")
		return nil
	}); err == nil {
		t.Fatal("Do into a closed handle succeeded")
	}
	if h := current(t); !h.Equal(orig) {
		t.Fatalf("after a failed Do the goroutine is in %v, want %v", h, orig)
	}
}
