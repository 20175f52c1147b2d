//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package mediaflow

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/traverse-rtc/traverse/internal/kfast"
	"github.com/traverse-rtc/traverse/internal/kfast/kfasttest"
	"github.com/traverse-rtc/traverse/internal/mediaproxy"
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
	t.Run("partial checksums completed at the gateway", func(t *testing.T) {
		l := kfasttest.New(t, false)
		l.GatewayChecksums(t)
		testOffloadTakesOverFlow(t, l)
	})
	t.Run("full checksums from the senders", func(t *testing.T) {
		l := kfasttest.New(t, false)
		l.FullChecksums(t)
		testOffloadTakesOverFlow(t, l)
	})
}

func testOffloadTakesOverFlow(t *testing.T, l *kfasttest.Lab) {
	off := kfasttest.InGateway(t, l, func() (*Offloader, error) { return New(Config{NetNS: int(l.Gateway)}) })
	skipWithoutTCX(t, off)
	c := kfasttest.StartCall(t, l, off)
	p, flow := c.Proxy, c.Flow
	c.WaitOffloaded(t)

	// Attached to exactly the two gateway interfaces, once each.
	ifs := off.Attachments()
	if len(ifs) != 2 {
		t.Errorf("attached to interfaces %v, want out0 and in0", ifs)
	}
	attached := func() (total int) {
		l.In(t, l.Gateway, func() {
			for i := range ifs {
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

	kfasttest.LabSuite(t, labPath{c, off}, 200, 100*time.Millisecond)

	// Removed twice (the suite handed the flow back): no error, no stats.
	if err := off.Remove(flow); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if _, _, err := off.Stats(flow); !errors.Is(err, mediaproxy.ErrNoSession) {
		t.Errorf("Stats of a removed flow: %v", err)
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

// labPath is the call of the lab test as the conformance suite drives it,
// with one more check before the hand-back: the program counts 200 bytes
// of IP length per packet.
type labPath struct {
	*kfasttest.Call
	off *Offloader
}

func (p labPath) HandBack(t *testing.T) {
	t.Helper()
	if pk, by, err := p.off.Stats(p.Flow); err != nil || by != pk*(20+8+172) {
		t.Errorf("program counted %d packets, %d bytes (%v), want 200 bytes each", pk, by, err)
	}
	p.Call.HandBack(t)
}

// TestOffloadRefusesLocalAndIPv6: flows the program cannot carry stay in
// user space with an error.
func TestOffloadRefusesLocalAndIPv6(t *testing.T) {
	l := kfasttest.New(t, false)
	off := kfasttest.InGateway(t, l, func() (*Offloader, error) { return New(Config{NetNS: int(l.Gateway)}) })
	ap := func(a netip.Addr, p uint16) netip.AddrPort { return netip.AddrPortFrom(a, p) }
	good := mediaproxy.Flow{Client: ap(kfasttest.ClientIP, 4000), Fixed: ap(kfasttest.OutsideIP, 7000), Inside: ap(kfasttest.InsideIP, 30000),
		Server: ap(kfasttest.ServerIP, 5000), ServerSrc: ap(kfasttest.ServerIP, 5000)}
	v6 := good
	v6.Client = netip.MustParseAddrPort("[2001:db8::1]:4000")
	if err := off.Offload(v6); !errors.Is(err, kfast.ErrNotIPv4) {
		t.Errorf("IPv6 flow: %v", err)
	}
	local := good
	local.Server = ap(kfasttest.InsideIP, 5000) // the gateway itself
	if err := off.Offload(local); !errors.Is(err, kfast.ErrNoRoute) {
		t.Errorf("local server: %v", err)
	}
	unroutable := good
	unroutable.Client = ap(netip.MustParseAddr("192.0.2.9"), 4000)
	if err := off.Offload(unroutable); !errors.Is(err, kfast.ErrNoRoute) {
		t.Errorf("unroutable client: %v", err)
	}
	if off.Flows() != 0 || len(off.Attachments()) != 0 {
		t.Errorf("refused flows left %d flows, %d attachments", off.Flows(), len(off.Attachments()))
	}
	if err := off.Offload(good); errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("kernel lacks TCX (Linux 6.6+): %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
	if off.Flows() != 1 || len(off.Attachments()) != 2 {
		t.Errorf("%d flows, %d attachments, want 1 and 2", off.Flows(), len(off.Attachments()))
	}
}

// skipWithoutTCX installs and removes a probe flow, skipping the test on
// kernels without TCX (before Linux 6.6).
func skipWithoutTCX(t *testing.T, off *Offloader) {
	t.Helper()
	probe := mediaproxy.Flow{Client: netip.AddrPortFrom(kfasttest.ClientIP, 1), Fixed: netip.AddrPortFrom(kfasttest.OutsideIP, 1),
		Inside: netip.AddrPortFrom(kfasttest.InsideIP, 1), Server: netip.AddrPortFrom(kfasttest.ServerIP, 1), ServerSrc: netip.AddrPortFrom(kfasttest.ServerIP, 1)}
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
