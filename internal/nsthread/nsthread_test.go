package nsthread_test

import (
	"errors"
	"os"
	"runtime"
	"testing"

	"github.com/traverse-rtc/traverse/internal/nsthread"
	"github.com/vishvananda/netns"
)

// TestDo: New leaves the thread where it was; f runs in the namespace, its
// error comes back, and the thread is back where it was after Do, also
// after a Do that could not enter.
func TestDo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	// Locked here, the thread Do runs on is this one, so where it ends up
	// can be checked (Do's own lock nests in this one).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	back := func(after string) {
		t.Helper()
		h, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if !h.Equal(orig) {
			t.Fatalf("after %s the thread is in %v, want %v", after, h, orig)
		}
	}
	ns, err := nsthread.New("")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	back("New")

	errF := errors.New("f failed")
	err = nsthread.Do(ns, func() error {
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
	back("Do")

	if err := nsthread.Do(netns.None(), func() error {
		t.Error("f ran although the namespace could not be entered")
		return nil
	}); err == nil {
		t.Fatal("Do into a closed handle succeeded")
	}
	back("a Do that could not enter")
}
