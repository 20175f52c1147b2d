//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpfoffload

import (
	"runtime"
	"testing"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/traverse-rtc/traverse/internal/mediaproxy/offloadtest"
)

// lab is the offload test lab (package offloadtest) under the short names
// these tests use. The gateway does NOT forward IPv4 (ip_forward=0):
// whatever reaches the far side and did not come from the proxy's sockets
// went through the eBPF program.
type lab struct {
	*offloadtest.Lab
	client, gw, server netns.NsHandle
}

var (
	clientIP  = offloadtest.ClientIP
	outsideIP = offloadtest.OutsideIP
	insideIP  = offloadtest.InsideIP
	serverIP  = offloadtest.ServerIP
)

func newLab(t *testing.T) *lab {
	l := offloadtest.New(t, false)
	return &lab{Lab: l, client: l.Client, gw: l.Gateway, server: l.Server}
}

func (l *lab) in(t *testing.T, ns netns.NsHandle, f func()) { l.In(t, ns, f) }

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
