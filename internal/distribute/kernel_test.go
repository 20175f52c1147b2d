//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package distribute_test

import (
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/traverse-rtc/traverse/internal/distribute"
	"github.com/traverse-rtc/traverse/internal/distribute/distbpf"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// inNetNS runs f on this goroutine's thread switched into a new network
// namespace with lo up: every socket f opens, and the program it
// attaches, live there, so nothing touches the host's lo.
func inNetNS(t *testing.T, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the kernel path's tests need root (network namespaces, eBPF)")
	}
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
	defer ns.Close()
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(err)
		}
	}()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	f()
}

// kernelEnv starts a Server with the kernel path in the current
// namespace.
func kernelEnv(t *testing.T, clsact bool) distribute.BehaviourEnv {
	k, err := distbpf.New(distbpf.Config{Clsact: clsact})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg := distribute.Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Registerer: reg, RTCPTimeout: -1, Kernel: k}
	cfg.Policy.Loopback = true
	s, err := distribute.New(cfg)
	if err != nil {
		k.Close()
		t.Fatal(err)
	}
	if s.Path() != distbpf.Path {
		t.Fatalf("path %q", s.Path())
	}
	testkit.Run(t, s.Run)
	t.Cleanup(func() { s.Close() })
	return distribute.BehaviourEnv{Table: s.Table(), Dst: s.Addrs()[0], Reg: reg, Kernel: true}
}

// TestBehaviourKernel runs the behaviour suite against the tc program
// (TCX and clsact), on a namespace's lo: copies to local receivers go out
// of lo and come back in, as on a single-host distribution server.
func TestBehaviourKernel(t *testing.T) {
	for _, clsact := range []bool{false, true} {
		for _, c := range distribute.Behaviour {
			name := "tcx/" + c.Name
			if clsact {
				name = "clsact/" + c.Name
			}
			t.Run(name, func(t *testing.T) {
				inNetNS(t, func() { c.Run(t, kernelEnv(t, clsact)) })
			})
		}
	}
}
