//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpfoffload

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// lab is three network namespaces: client <-> gateway <-> server, so that
// programs and forwarding never touch the host. The gateway does NOT
// forward IPv4 (ip_forward=0): whatever reaches the far side and did not
// come from the proxy's sockets went through the eBPF program.
//
//	client 10.1.0.2/24 --veth-- 10.1.0.1 gateway 10.2.0.1 --veth-- 10.2.0.2/24 server
type lab struct {
	client, gw, server netns.NsHandle
	orig               netns.NsHandle
}

var (
	clientIP  = netip.MustParseAddr("10.1.0.2")
	outsideIP = netip.MustParseAddr("10.1.0.1")
	insideIP  = netip.MustParseAddr("10.2.0.1")
	serverIP  = netip.MustParseAddr("10.2.0.2")
)

func newLab(t *testing.T) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{orig: orig}
	t.Cleanup(func() {
		for _, h := range []netns.NsHandle{l.client, l.gw, l.server} {
			if h.IsOpen() {
				h.Close()
			}
		}
		orig.Close()
	})
	mk := func() netns.NsHandle {
		h, err := netns.New()
		if err != nil {
			t.Fatal(err)
		}
		if err := netns.Set(orig); err != nil {
			t.Fatal(err)
		}
		return h
	}
	l.client, l.gw, l.server = mk(), mk(), mk()
	gw, err := netlink.NewHandleAt(l.gw)
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
	link("out0", "out1", l.client, outsideIP, clientIP)
	link("in0", "in1", l.server, insideIP, serverIP)
	l.in(t, l.gw, func() {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("0"), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	return l
}

// in runs f on a thread switched into ns; sockets f opens stay in ns.
func (l *lab) in(t *testing.T, ns netns.NsHandle, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(l.orig); err != nil {
			panic(err)
		}
	}()
	f()
}

// txChecksum turns transmit checksum offload of interface name in ns on
// or off (ETHTOOL_STXCSUM). Off, the device's senders compute full UDP
// checksums, and partial ones handed to it are completed in software, so
// the receiving stack verifies every checksum the program produced.
func (l *lab) txChecksum(t *testing.T, ns netns.NsHandle, name string, on bool) {
	t.Helper()
	l.in(t, ns, func() {
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
