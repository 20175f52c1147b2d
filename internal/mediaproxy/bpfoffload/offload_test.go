//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpfoffload

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"

	"github.com/traverse-rtc/traverse/internal/mediaproxy"
	"github.com/traverse-rtc/traverse/internal/mediaproxy/offloadtest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestOffloadTakesOverFlow sends RTP from a client namespace through the
// media proxy in the gateway namespace to an echoing server namespace. After
// the first packets the flow moves into the eBPF program; from then on the
// user-space packet counter must stop growing while every packet still comes
// back (the gateway does not forward IPv4, so only the program can carry
// them), and the program's counters must grow instead. Removing the flow
// hands it back to user space, which keeps it flowing; Close detaches the
// program from every interface.
//
// It runs twice, so that the receiving stacks verify every UDP checksum the
// program wrote: once with the senders leaving checksums partial (veth
// offload, the default) and the gateway's interfaces completing them in
// software, once with the senders computing them in full.
func TestOffloadTakesOverFlow(t *testing.T) {
	for _, tc := range []struct {
		name    string
		txOffIn func(l *offloadtest.Lab) (netns.NsHandle, []string)
	}{
		{"partial checksums completed at the gateway", func(l *offloadtest.Lab) (netns.NsHandle, []string) { return l.Gateway, []string{"out0", "in0"} }},
		{"full checksums from the senders", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := offloadtest.New(t, false)
			if tc.txOffIn != nil {
				ns, names := tc.txOffIn(l)
				for _, n := range names {
					l.TxChecksum(t, ns, n, false)
				}
			} else {
				l.TxChecksum(t, l.Client, "out1", false)
				l.TxChecksum(t, l.Server, "in1", false)
			}
			testOffloadTakesOverFlow(t, l)
		})
	}
}

func testOffloadTakesOverFlow(t *testing.T, l *offloadtest.Lab) {
	off := offloadtest.InGateway(t, l, func() (*Offloader, error) { return New(Config{NetNS: int(l.Gateway), StatsMaxAge: time.Millisecond}) })
	skipWithoutTCX(t, off)
	c := offloadtest.StartCall(t, l, off)
	p, flow := c.Proxy, c.Flow
	c.WaitOffloaded(t)
	before := c.UserSpace()
	pk0, _, err := off.Stats(flow)
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	for range n {
		c.RoundTrip(t)
	}
	if d := c.UserSpace() - before; d != 0 {
		t.Errorf("user space still forwarded %d packets after offload", d)
	}
	if got, want := c.ServerSawFrom(), flow.Inside; got != want {
		t.Errorf("server saw packets from %v, want the inside port %v", got, want)
	}
	var pk, by uint64
	testkit.WaitFor(t, 5*time.Second, "the program's counters", func() bool { // re-read after StatsMaxAge
		pk, by, err = off.Stats(flow)
		return err != nil || pk-pk0 >= 2*n
	})
	if err != nil || pk-pk0 != 2*n || by < pk*(20+8+172) {
		t.Errorf("program counted %d packets (%d new), %d bytes (%v), want %d new of 200 bytes each", pk, pk-pk0, by, err, 2*n)
	}
	testkit.WaitFor(t, 5*time.Second, "the proxy to read the kernel's count",
		func() bool { return p.Counters().KernelPackets.Load() >= 2*n })
	q, err := p.Apply(&mediaproxy.Descriptor{Op: mediaproxy.OpQuery, CallID: "k"})
	if err != nil || !q.Offloaded || q.ToServer < n || q.ToClient < n {
		t.Errorf("query after offload: %+v %v", q, err)
	}

	// Attached to exactly the two gateway interfaces, once each.
	ifs := off.Interfaces()
	if len(ifs) != 2 {
		t.Errorf("attached to interfaces %v, want out0 and in0", ifs)
	}
	attached := func() (total int) {
		l.In(t, l.Gateway, func() {
			for _, i := range ifs {
				res, err := link.QueryPrograms(link.QueryOptions{Target: i, Attach: ebpf.AttachTCXIngress})
				if err != nil {
					t.Fatal(err)
				}
				total += len(res.Programs)
			}
		})
		return total
	}
	if got := attached(); got != 2 {
		t.Errorf("%d programs on the interfaces, want 2", got)
	}

	// Remove hands the flow back: user space forwards it again.
	if err := off.Remove(flow); err != nil {
		t.Fatal(err)
	}
	if err := off.Remove(flow); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if _, _, err := off.Stats(flow); !errors.Is(err, mediaproxy.ErrNoSession) {
		t.Errorf("Stats of a removed flow: %v", err)
	}
	before = c.UserSpace()
	for range 10 {
		c.RoundTrip(t)
	}
	// The proxy counts a packet after its send returns, which can be after
	// the echo reached the client: wait for the count to settle.
	if !testkit.Eventually(5*time.Second, func() bool { return c.UserSpace()-before >= 20 }) {
		t.Errorf("user space forwarded %d packets after Remove, want 20", c.UserSpace()-before)
	}

	if err := p.DeleteCall("k"); err != nil {
		t.Fatal(err)
	}
	if off.Flows() != 0 {
		t.Fatal("flow not removed")
	}
	if err := off.Close(); err != nil {
		t.Fatal(err)
	}
	if err := off.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if got := attached(); got != 0 {
		t.Errorf("%d programs left on the interfaces after Close", got)
	}
	if err := off.Offload(flow); !errors.Is(err, mediaproxy.ErrClosed) {
		t.Errorf("Offload after Close: %v", err)
	}
}

// TestOffloadRefusesLocalAndIPv6: flows the program cannot carry stay in
// user space with an error.
func TestOffloadRefusesLocalAndIPv6(t *testing.T) {
	l := offloadtest.New(t, false)
	off := offloadtest.InGateway(t, l, func() (*Offloader, error) { return New(Config{NetNS: int(l.Gateway)}) })
	ap := func(a netip.Addr, p uint16) netip.AddrPort { return netip.AddrPortFrom(a, p) }
	good := mediaproxy.Flow{Client: ap(offloadtest.ClientIP, 4000), Fixed: ap(offloadtest.OutsideIP, 7000), Inside: ap(offloadtest.InsideIP, 30000),
		Server: ap(offloadtest.ServerIP, 5000), ServerSrc: ap(offloadtest.ServerIP, 5000)}
	v6 := good
	v6.Client = netip.MustParseAddrPort("[2001:db8::1]:4000")
	if err := off.Offload(v6); !errors.Is(err, ErrNotIPv4) {
		t.Errorf("IPv6 flow: %v", err)
	}
	local := good
	local.Server = ap(offloadtest.InsideIP, 5000) // the gateway itself
	if err := off.Offload(local); !errors.Is(err, ErrNoRoute) {
		t.Errorf("local server: %v", err)
	}
	unroutable := good
	unroutable.Client = ap(netip.MustParseAddr("192.0.2.9"), 4000)
	if err := off.Offload(unroutable); !errors.Is(err, ErrNoRoute) {
		t.Errorf("unroutable client: %v", err)
	}
	if off.Flows() != 0 || len(off.Interfaces()) != 0 {
		t.Errorf("refused flows left %d flows, %d attachments", off.Flows(), len(off.Interfaces()))
	}
	if err := off.Offload(good); errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("kernel lacks TCX (Linux 6.6+): %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
	if off.Flows() != 1 || len(off.Interfaces()) != 2 {
		t.Errorf("%d flows, %d attachments, want 1 and 2", off.Flows(), len(off.Interfaces()))
	}
}

// skipWithoutTCX installs and removes a probe flow, skipping the test on
// kernels without TCX (before Linux 6.6).
func skipWithoutTCX(t *testing.T, off *Offloader) {
	t.Helper()
	probe := mediaproxy.Flow{Client: netip.AddrPortFrom(offloadtest.ClientIP, 1), Fixed: netip.AddrPortFrom(offloadtest.OutsideIP, 1),
		Inside: netip.AddrPortFrom(offloadtest.InsideIP, 1), Server: netip.AddrPortFrom(offloadtest.ServerIP, 1), ServerSrc: netip.AddrPortFrom(offloadtest.ServerIP, 1)}
	err := off.Offload(probe)
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("kernel lacks TCX (Linux 6.6+): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := off.Remove(probe); err != nil {
		t.Fatal(err)
	}
}
