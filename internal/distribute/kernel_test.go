//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package distribute_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/traverse-rtc/traverse/internal/distribute"
	"github.com/traverse-rtc/traverse/internal/kfast/distribution"
	"github.com/traverse-rtc/traverse/internal/kfast/kfasttest"
	"github.com/traverse-rtc/traverse/internal/metricstest"
	"github.com/traverse-rtc/traverse/internal/nsthread"
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
	ns, err := nsthread.New("")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := nsthread.Do(ns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		f()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// kernelEnv starts a Server with the kernel path in the current
// namespace.
func kernelEnv(t *testing.T, clsact bool) distribute.BehaviourEnv {
	k, err := distribution.New(distribution.Config{Clsact: clsact})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg := distribute.Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Registerer: reg, RTCPTimeout: -1, Kernel: k,
		UnreachableTimeout: distribute.BehaviourUnreachable, ReapInterval: distribute.BehaviourReap}
	cfg.Policy.Loopback = true
	s, err := distribute.New(cfg)
	if err != nil {
		k.Close()
		t.Fatal(err)
	}
	if s.Path() != distribution.Path {
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

// TestKernelLab: in the veth lab (client <-> gateway <-> server, the
// gateway not forwarding), a stream arriving at the gateway is fanned out
// by the program to receivers on both sides, each packet exactly once and
// with checksums the receiving stacks verify (transmit checksum offload
// off, so nothing is taken on trust); the stream enters the kernel once
// the receivers' neighbour entries exist (user space served the first
// packet); non-media traffic to the gateway reaches its sockets intact.
func TestKernelLab(t *testing.T) {
	for _, tc := range []struct {
		name  string
		txOff func(l *kfasttest.Lab)
	}{
		{"partial checksums completed at the gateway", func(l *kfasttest.Lab) {
			l.TxChecksum(t, l.Gateway, "out0", false)
			l.TxChecksum(t, l.Gateway, "in0", false)
		}},
		{"full checksums from the sender", func(l *kfasttest.Lab) {
			l.TxChecksum(t, l.Client, "out1", false)
			l.TxChecksum(t, l.Gateway, "out0", false)
			l.TxChecksum(t, l.Gateway, "in0", false)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := kfasttest.New(t, false)
			tc.txOff(l)
			kernelLab(t, l)
		})
	}
}

func kernelLab(t *testing.T, l *kfasttest.Lab) {
	k, err := distribution.New(distribution.Config{NetNS: int(l.Gateway)})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	dst := netip.AddrPortFrom(kfasttest.OutsideIP, 5004)
	cfg := distribute.Config{Listen: []netip.AddrPort{dst}, Registerer: reg, RTCPTimeout: -1, Kernel: k,
		ReapInterval: 20 * time.Millisecond}
	cfg.Policy.Allow = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	var s *distribute.Server
	var echo *net.UDPConn
	l.In(t, l.Gateway, func() {
		if s, err = distribute.New(cfg); err != nil {
			k.Close()
			t.Fatal(err)
		}
		echo = testkit.ListenUDP(t, netip.AddrPortFrom(kfasttest.OutsideIP, 7000))
	})
	testkit.Echo(t, echo, nil)
	testkit.Run(t, s.Run)
	t.Cleanup(func() { s.Close() })

	var conns []*net.UDPConn
	var addrs []netip.AddrPort
	open := func(ns netns.NsHandle, ip netip.Addr, n int) {
		l.In(t, ns, func() {
			for range n {
				c := testkit.ListenUDP(t, netip.AddrPortFrom(ip, 0))
				conns = append(conns, c)
				addrs = append(addrs, c.LocalAddr().(*net.UDPAddr).AddrPort())
			}
		})
	}
	open(l.Server, kfasttest.ServerIP, 3)
	open(l.Client, kfasttest.ClientIP, 2)
	var sender *net.UDPConn
	l.In(t, l.Client, func() { sender = testkit.ListenUDP(t, netip.AddrPortFrom(kfasttest.ClientIP, 0)) })

	key := distribute.StreamKey{Dst: dst, SSRC: 0xcafe, HasSSRC: true}
	if err := s.Table().AddStream(distribute.Stream{Key: key, Source: kfasttest.ClientIP, Receivers: addrs}); err != nil {
		t.Fatal(err)
	}
	// The first packet is served in user space: the gateway learns the
	// receivers' link addresses, and the next sync moves the stream into
	// the kernel.
	if _, err := sender.WriteToUDPAddrPort(distribute.RTPPacket(0xcafe, 0), dst); err != nil {
		t.Fatal(err)
	}
	for i, c := range conns {
		distribute.Expect(t, c, 0, 1, 0xcafe, fmt.Sprint("receiver ", addrs[i]))
	}
	testkit.WaitFor(t, 5*time.Second, "the stream in the kernel", func() bool { return k.Installed() == 1 })
	const pkts = 100
	for seq := 1; seq <= pkts; seq++ {
		if _, err := sender.WriteToUDPAddrPort(distribute.RTPPacket(0xcafe, uint16(seq)), dst); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range conns {
		distribute.Expect(t, c, 1, pkts+1, 0xcafe, fmt.Sprint("receiver ", addrs[i]))
	}
	if v := metricstest.Value(t, reg, "traverse_distribute_packets_in_total"); v != 1 {
		t.Errorf("user space distributed %v packets, want only the first", v)
	}
	for _, st := range s.Table().Streams() {
		for _, r := range st.Receivers {
			if r.Packets != pkts+1 || r.Bytes != (pkts+1)*200 {
				t.Errorf("receiver %v counted %d packets %d bytes, want %d", r.Addr, r.Packets, r.Bytes, pkts+1)
			}
		}
	}
	// Non-media traffic to the gateway passes untouched.
	msg := []byte("not media, not for the program")
	if _, err := sender.WriteToUDPAddrPort(msg, netip.AddrPortFrom(kfasttest.OutsideIP, 7000)); err != nil {
		t.Fatal(err)
	}
	_ = sender.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	if n, _, err := sender.ReadFromUDPAddrPort(buf); err != nil || string(buf[:n]) != string(msg) {
		t.Fatalf("echo through the gateway: %q, %v", buf[:n], err)
	}
	// Removing a receiver stops its copies at once.
	if err := s.Table().RemoveReceiver(key, addrs[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := sender.WriteToUDPAddrPort(distribute.RTPPacket(0xcafe, pkts+1), dst); err != nil {
		t.Fatal(err)
	}
	for i, c := range conns[1:] {
		distribute.Expect(t, c, pkts+1, pkts+2, 0xcafe, fmt.Sprint("receiver ", addrs[i+1]))
	}
	testkit.Silent(t, conns[0], "removed receiver")
}
