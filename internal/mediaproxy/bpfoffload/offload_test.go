//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpfoffload

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"

	"github.com/traverse-rtc/traverse/internal/addrpolicy"
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
	for _, tc := range []struct {
		name    string
		txOffIn func(l *lab) (netns.NsHandle, []string)
	}{
		{"partial checksums completed at the gateway", func(l *lab) (netns.NsHandle, []string) { return l.gw, []string{"out0", "in0"} }},
		{"full checksums from the senders", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t)
			if tc.txOffIn != nil {
				ns, names := tc.txOffIn(l)
				for _, n := range names {
					l.txChecksum(t, ns, n, false)
				}
			} else {
				l.txChecksum(t, l.client, "out1", false)
				l.txChecksum(t, l.server, "in1", false)
			}
			testOffloadTakesOverFlow(t, l)
		})
	}
}

func testOffloadTakesOverFlow(t *testing.T, l *lab) {
	var off *Offloader
	var p *mediaproxy.Proxy
	l.in(t, l.gw, func() {
		var err error
		off, err = New(Config{NetNS: int(l.gw), StatsMaxAge: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		p, err = mediaproxy.New(mediaproxy.Config{
			RTP: netip.AddrPortFrom(outsideIP, 7000), RTCP: netip.AddrPortFrom(outsideIP, 7001),
			InsideIP: insideIP, InsidePorts: mediaproxy.PortRange{Low: 30000, High: 30100},
			Offloader: off, OffloadAfter: 20, Tick: 20 * time.Millisecond,
			// The lab's outside network is private: the destination
			// policy refuses it unless allowed.
			Policy: addrpolicy.Filter{Allow: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}},
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { p.Close(); off.Close() })
	skipWithoutTCX(t, off)

	var client, server *net.UDPConn
	l.in(t, l.client, func() {
		var err error
		if client, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(clientIP, 4000))); err != nil {
			t.Fatal(err)
		}
	})
	l.in(t, l.server, func() {
		var err error
		if server, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(serverIP, 5000))); err != nil {
			t.Fatal(err)
		}
	})
	defer client.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	var mu sync.Mutex
	var sawFrom netip.AddrPort
	go func() { // the server echoes
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			n, a, err := server.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			mu.Lock()
			sawFrom = a
			mu.Unlock()
			_, _ = server.WriteToUDPAddrPort(buf[:n], a)
		}
	}()
	defer func() { server.Close(); wg.Wait() }()

	var r mediaproxy.Reply
	l.in(t, l.gw, func() {
		var err error
		r, err = p.Apply(&mediaproxy.Descriptor{Op: mediaproxy.OpUpsert, Flags: mediaproxy.FlagCallerOutside | mediaproxy.FlagSSRC,
			SSRC: 77, CallID: "k", Client: netip.AddrPortFrom(clientIP, 4000), Server: netip.AddrPortFrom(serverIP, 5000)})
		if err != nil {
			t.Fatal(err)
		}
	})
	fixed := netip.AddrPortFrom(outsideIP, 7000)
	flow := mediaproxy.Flow{Client: netip.AddrPortFrom(clientIP, 4000), Fixed: fixed,
		Inside: netip.AddrPortFrom(insideIP, r.InsideRTP), Server: netip.AddrPortFrom(serverIP, 5000), ServerSrc: netip.AddrPortFrom(serverIP, 5000)}
	pkt := make([]byte, 172)
	pkt[0] = 0x80
	binary.BigEndian.PutUint32(pkt[8:], 77)
	buf := make([]byte, 2048)
	roundTrip := func(seq int) {
		t.Helper()
		binary.BigEndian.PutUint16(pkt[2:], uint16(seq))
		if _, err := client.WriteToUDPAddrPort(pkt, fixed); err != nil {
			t.Fatal(err)
		}
		_ = client.SetReadDeadline(time.Now().Add(3 * time.Second))
		for {
			n, from, err := client.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("packet %d: %v", seq, err)
			}
			if n == len(pkt) && from == fixed && binary.BigEndian.Uint16(buf[2:]) == uint16(seq) {
				return
			}
		}
	}
	seq := 0
	for ; seq < 40; seq++ {
		roundTrip(seq)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Counters().Offloads.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("not offloaded; errors %d", p.Counters().OffloadErrors.Load())
		}
		roundTrip(seq)
		seq++
	}
	// Packets queued on the sockets before the map entries landed may
	// still be forwarded by user space: wait until its counters settle.
	for i := 0; i < 5; i++ {
		roundTrip(seq)
		seq++
	}
	userSpace := func() uint64 { return p.Counters().RTPIn.Load() + p.Counters().RTPOut.Load() }
	last, same := userSpace(), 0
	waitFor(t, func() bool {
		if v := userSpace(); v != last {
			last, same = v, 0
			return false
		}
		same++
		return same >= 10
	})
	before := userSpace()
	pk0, _, err := off.Stats(flow)
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	for i := 0; i < n; i++ {
		roundTrip(seq)
		seq++
	}
	if d := userSpace() - before; d != 0 {
		t.Errorf("user space still forwarded %d packets after offload", d)
	}
	mu.Lock()
	got := sawFrom
	mu.Unlock()
	if want := flow.Inside; got != want {
		t.Errorf("server saw packets from %v, want the inside port %v", got, want)
	}
	var pk, by uint64
	waitFor(t, func() bool { // counters are re-read after StatsMaxAge
		pk, by, err = off.Stats(flow)
		return err != nil || pk-pk0 >= 2*n
	})
	if err != nil || pk-pk0 != 2*n || by < pk*(20+8+172) {
		t.Errorf("program counted %d packets (%d new), %d bytes (%v), want %d new of 200 bytes each", pk, pk-pk0, by, err, 2*n)
	}
	waitFor(t, func() bool { return p.Counters().KernelPackets.Load() >= 2*n })
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
		l.in(t, l.gw, func() {
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
	before = userSpace()
	for i := 0; i < 10; i++ {
		roundTrip(seq)
		seq++
	}
	// The proxy counts a packet after its send returns, which can be after
	// the echo reached the client: wait for the count to settle.
	for deadline := time.Now().Add(5 * time.Second); userSpace()-before < 20; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("user space forwarded %d packets after Remove, want 20", userSpace()-before)
			break
		}
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
	l := newLab(t)
	var off *Offloader
	l.in(t, l.gw, func() {
		var err error
		if off, err = New(Config{NetNS: int(l.gw)}); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { off.Close() })
	ap := func(a netip.Addr, p uint16) netip.AddrPort { return netip.AddrPortFrom(a, p) }
	good := mediaproxy.Flow{Client: ap(clientIP, 4000), Fixed: ap(outsideIP, 7000), Inside: ap(insideIP, 30000),
		Server: ap(serverIP, 5000), ServerSrc: ap(serverIP, 5000)}
	v6 := good
	v6.Client = netip.MustParseAddrPort("[2001:db8::1]:4000")
	if err := off.Offload(v6); !errors.Is(err, ErrNotIPv4) {
		t.Errorf("IPv6 flow: %v", err)
	}
	local := good
	local.Server = ap(insideIP, 5000) // the gateway itself
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
	probe := mediaproxy.Flow{Client: netip.AddrPortFrom(clientIP, 1), Fixed: netip.AddrPortFrom(outsideIP, 1),
		Inside: netip.AddrPortFrom(insideIP, 1), Server: netip.AddrPortFrom(serverIP, 1), ServerSrc: netip.AddrPortFrom(serverIP, 1)}
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

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
