//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package mediaflow

import (
	"errors"
	"net/netip"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/traverse-rtc/traverse/internal/kfast"
	"github.com/traverse-rtc/traverse/internal/mediaproxy"
)

// TestOffloadKeepsRouteCause: a flow with no route is refused with this
// package's ErrNoRoute, and the cause kfast found stays visible through
// it (errors.Is reaches kfast.ErrNoRoute), so a caller can tell "no
// route" from its own failures without parsing text.
func TestOffloadKeepsRouteCause(t *testing.T) {
	ns := emptyNetNS(t)
	off, err := New(Config{NetNS: int(ns)})
	if err != nil {
		t.Skipf("eBPF program does not load here: %v", err)
	}
	defer off.Close()
	ap := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	f := mediaproxy.Flow{Client: ap("192.0.2.1:4000"), Fixed: ap("192.0.2.2:7000"), Inside: ap("198.51.100.2:30000"),
		Server: ap("198.51.100.9:5000"), ServerSrc: ap("198.51.100.9:5000")}
	err = off.Offload(f)
	if !errors.Is(err, ErrNoRoute) || !errors.Is(err, kfast.ErrNoRoute) {
		t.Fatalf("Offload in a namespace without routes: %v (want ErrNoRoute wrapping kfast.ErrNoRoute)", err)
	}
}

// emptyNetNS makes a network namespace with no route at all (its lo is
// down) without moving the test into it.
func emptyNetNS(t *testing.T) netns.NsHandle {
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
		t.Skipf("no network namespaces (needs root): %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}
