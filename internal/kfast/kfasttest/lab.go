//go:build linux

package kfasttest

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"unsafe"

	"github.com/traverse-rtc/traverse/internal/nsthread"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Lab is three network namespaces, client <-> gateway <-> server, so that
// offload rules, programs and forwarding never touch the host:
//
//	client 10.1.0.2/24 --veth-- 10.1.0.1 gateway 10.2.0.1 --veth-- 10.2.0.2/24 server
//
// The gateway's interfaces are out0 (towards the client, whose end is
// out1) and in0 (towards the server, in1).
type Lab struct {
	Client, Gateway, Server netns.NsHandle
}

// The lab's addresses.
var (
	ClientIP  = netip.MustParseAddr("10.1.0.2")
	OutsideIP = netip.MustParseAddr("10.1.0.1")
	InsideIP  = netip.MustParseAddr("10.2.0.1")
	ServerIP  = netip.MustParseAddr("10.2.0.2")
)

// New builds the lab, torn down when the test ends. forward sets the
// gateway's ip_forward: off, only the proxy's sockets or a kernel fast
// path can carry packets across. It skips the test when not root.
func New(t testing.TB, forward bool) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	l := &Lab{}
	t.Cleanup(func() {
		for _, h := range []netns.NsHandle{l.Client, l.Gateway, l.Server} {
			if h.IsOpen() {
				h.Close()
			}
		}
	})
	mk := func() netns.NsHandle {
		h, err := nsthread.New("")
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	l.Client, l.Gateway, l.Server = mk(), mk(), mk()
	gw, err := netlink.NewHandleAt(l.Gateway)
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	link := func(name, peer string, peerNS netns.NsHandle, gwIP, peerIP netip.Addr) {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}
		if err := gw.LinkAdd(v); err != nil {
			t.Fatal(err)
		}
		p, err := gw.LinkByName(peer)
		if err != nil {
			t.Fatal(err)
		}
		if err := gw.LinkSetNsFd(p, int(peerNS)); err != nil {
			t.Fatal(err)
		}
		addr := func(h *netlink.Handle, ifname string, ip netip.Addr) {
			l, err := h.LinkByName(ifname)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
				t.Fatal(err)
			}
			if err := h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
			lo, _ := h.LinkByName("lo")
			_ = h.LinkSetUp(lo)
		}
		ph, err := netlink.NewHandleAt(peerNS)
		if err != nil {
			t.Fatal(err)
		}
		defer ph.Close()
		addr(gw, name, gwIP)
		addr(ph, peer, peerIP)
	}
	link("out0", "out1", l.Client, OutsideIP, ClientIP)
	link("in0", "in1", l.Server, InsideIP, ServerIP)
	fwd := []byte("0")
	if forward {
		fwd = []byte("1")
	}
	l.In(t, l.Gateway, func() {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", fwd, 0o644); err != nil {
			t.Fatal(err)
		}
	})
	return l
}

// In runs f on a thread switched into ns; sockets f opens stay in ns.
func (l *Lab) In(t testing.TB, ns netns.NsHandle, f func()) {
	t.Helper()
	if err := nsthread.Do(ns, func() error { f(); return nil }); err != nil {
		t.Fatal(err)
	}
}

// TxChecksum turns transmit checksum offload of interface name in ns on or
// off (ETHTOOL_STXCSUM). Off, the device's senders compute full UDP
// checksums, and partial ones handed to it are completed in software, so
// the receiving stack verifies every checksum a program produced.
func (l *Lab) TxChecksum(t testing.TB, ns netns.NsHandle, name string, on bool) {
	t.Helper()
	l.In(t, ns, func() {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		val := struct{ cmd, data uint32 }{cmd: unix.ETHTOOL_STXCSUM}
		if on {
			val.data = 1
		}
		var ifr [unix.IFNAMSIZ + 24]byte
		copy(ifr[:], name)
		*(*uintptr)(unsafe.Pointer(&ifr[unix.IFNAMSIZ])) = uintptr(unsafe.Pointer(&val))
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr[0])))
		runtime.KeepAlive(&val)
		if errno != 0 {
			t.Fatalf("ethtool tx checksum %s: %v", name, errno)
		}
	})
}

// FullChecksums makes the client's and the server's senders compute full
// UDP checksums (their veths' transmit checksum offload off), so the
// receiving stacks verify every checksum a program rewrote from them.
func (l *Lab) FullChecksums(t testing.TB) {
	t.Helper()
	l.TxChecksum(t, l.Client, "out1", false)
	l.TxChecksum(t, l.Server, "in1", false)
}

// GatewayChecksums makes the gateway's interfaces complete in software
// the partial checksums of the packets they send (the senders keep
// theirs partial), so the receiving stacks verify the result.
func (l *Lab) GatewayChecksums(t testing.TB) {
	t.Helper()
	l.TxChecksum(t, l.Gateway, "out0", false)
	l.TxChecksum(t, l.Gateway, "in0", false)
}
