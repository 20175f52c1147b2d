//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package kfast_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/traverse-rtc/traverse/internal/kfast"
	"github.com/traverse-rtc/traverse/internal/kfast/kfasttest"
)

// TestLoad: a program is loaded with the maps it uses, and no others,
// sized by the config; its entries are kfast's Go types as they are.
func TestLoad(t *testing.T) {
	l := kfasttest.Load(t, kfast.Config{Program: "mediaflow", Slots: 3, Maps: map[string]uint32{"flows": 7}})
	if got := l.Map(kfast.CountersMap).MaxEntries(); got != 3 {
		t.Errorf("counters sized %d, want 3", got)
	}
	if got := l.Map("flows").MaxEntries(); got != 7 {
		t.Errorf("flows sized %d, want 7", got)
	}
	if m := l.Map("relays"); m != nil {
		t.Errorf("another program's map loaded: %v", m)
	}
	if err := l.Map("flows").Put(kfast.Tuple{Saddr: 1}, kfast.Out{Slot: 2}); err != nil {
		t.Errorf("Tuple and Out do not fit the C layout: %v", err)
	}
	for _, cfg := range []kfast.Config{
		{Program: "mediaflow", Slots: 0},
		{Program: "nope", Slots: 1},
		{Program: "mediaflow", Slots: 1, Maps: map[string]uint32{"relays": 1}},
	} {
		if _, err := kfast.Load(cfg); !errors.Is(err, kfast.ErrConfig) {
			t.Errorf("Load(%+v): %v, want ErrConfig", cfg, err)
		}
	}
}

// TestSlots: slots are handed out until none is left, all or none at once,
// zeroed on every CPU, and come back with Release.
func TestSlots(t *testing.T) {
	l := kfasttest.Load(t, kfast.Config{Program: "mediaflow", Slots: 3})
	a, err := l.Slots(2)
	if err != nil || len(a) != 2 || a[0] == a[1] {
		t.Fatalf("Slots(2) = %v, %v", a, err)
	}
	if _, err := l.Slots(2); !errors.Is(err, kfast.ErrFull) {
		t.Errorf("Slots(2) with one left: %v, want ErrFull", err)
	}
	if l.FreeSlots() != 1 {
		t.Errorf("%d free after a refused Slots, want 1", l.FreeSlots())
	}
	// A slot the program counted into comes back zeroed.
	ncpu, _ := ebpf.PossibleCPU()
	dirty := make([]kfast.Counts, ncpu)
	dirty[0] = kfast.Counts{Packets: 5, Bytes: 500}
	if err := l.Map(kfast.CountersMap).Put(a[0], dirty); err != nil {
		t.Fatal(err)
	}
	if c, err := l.Read(a[0]); err != nil || c != (kfast.Counts{Packets: 5, Bytes: 500}) {
		t.Errorf("Read = %+v, %v", c, err)
	}
	l.Release(a...)
	b, err := l.Slots(3)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range b {
		if c, err := l.Read(s); err != nil || c != (kfast.Counts{}) {
			t.Errorf("slot %d handed out with %+v (%v)", s, c, err)
		}
	}
}

func TestV4(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1:5000":          "192.0.2.1:5000",
		"[::ffff:192.0.2.1]:5000": "192.0.2.1:5000", // a dual-stack socket's view
		"[2001:db8::1]:5000":      "",
		"0.0.0.0:5000":            "",
		"192.0.2.1:0":             "",
	} {
		got, err := kfast.V4(netip.MustParseAddrPort(in))
		if want == "" {
			if !errors.Is(err, kfast.ErrNotIPv4) {
				t.Errorf("V4(%s) = %v, %v; want ErrNotIPv4", in, got, err)
			}
		} else if err != nil || got.String() != want {
			t.Errorf("V4(%s) = %v, %v; want %s", in, got, err, want)
		}
	}
}

func TestRouteTo(t *testing.T) {
	src, dst := netip.MustParseAddrPort("192.0.2.1:1"), netip.MustParseAddrPort("198.51.100.2:258")
	o := kfast.Route{Ifindex: 4, MTU: 1500}.To(src, dst, 9, 77)
	want := kfast.Out{Deadline: 77, Ifindex: 4, Slot: 9, MaxLen: 1500,
		To: kfast.Tuple{Saddr: 0x010200c0, Daddr: 0x026433c6, Sport: 0x0100, Dport: 0x0201}}
	if o != want {
		t.Errorf("To = %+v, want %+v", o, want)
	}
	if o := (kfast.Route{Local: true, Ifindex: 1, MTU: 65536}).To(src, dst, 0, 0); o.Ifindex != 0 || o.MaxLen != 0xffff {
		t.Errorf("local route: ifindex %d max_len %d, want 0 (up the stack) and 65535", o.Ifindex, o.MaxLen)
	}
}

// TestAttach: in the lab's gateway, the program attaches once per
// interface with TCX (or with a clsact filter when forced), Route finds
// the interface toward the client and refuses what it cannot use, and
// Close leaves no program behind.
func TestAttach(t *testing.T) {
	for _, clsact := range []bool{false, true} {
		lab := kfasttest.New(t, false)
		ns := int(lab.Gateway)
		l := kfasttest.Load(t, kfast.Config{NetNS: ns, Clsact: clsact, Program: "mediaflow", Slots: 1})
		r, err := l.Route(kfasttest.ClientIP)
		if err != nil || r.Local || r.Ifindex == 0 || r.MTU != 1500 {
			t.Fatalf("Route to the client: %+v, %v", r, err)
		}
		if r, err := l.Route(kfasttest.OutsideIP); err != nil || !r.Local {
			t.Errorf("Route to the gateway's own address: %+v, %v", r, err)
		}
		// The cause stays visible: a caller tells "no route" from its
		// own failures without parsing text.
		if _, err := l.Route(netip.MustParseAddr("192.0.2.1")); !errors.Is(err, kfast.ErrNoRoute) || !errors.Is(err, unix.ENETUNREACH) {
			t.Errorf("Route with no route: %v, want ErrNoRoute wrapping ENETUNREACH", err)
		}
		if err := l.Attach(r.Ifindex, r.Ifindex); err != nil {
			t.Fatal(err)
		}
		if err := l.Attach(r.Ifindex); err != nil {
			t.Fatal(err)
		}
		want := kfast.TCX
		if clsact {
			want = kfast.Clsact
		}
		if m := l.Attachments(); len(m) != 1 || m[r.Ifindex] != want {
			t.Errorf("attachments %v, want %d: %s", m, r.Ifindex, want)
		}
		if got := programs(t, ns, r.Ifindex, clsact); got != 1 {
			t.Errorf("%d programs on the interface, want 1", got)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if got := programs(t, ns, r.Ifindex, clsact); got != 0 {
			t.Errorf("%d programs left after Close", got)
		}
	}
}

// programs counts the programs on ifindex's ingress in ns.
func programs(t *testing.T, ns, ifindex int, clsact bool) int {
	t.Helper()
	n := 0
	err := kfast.InNetNS(ns, func() error {
		if !clsact {
			res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
			if err != nil {
				return err
			}
			n = len(res.Programs)
			return nil
		}
		l, err := netlink.LinkByIndex(ifindex)
		if err != nil {
			return err
		}
		fs, err := netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS)
		n = len(fs)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
