//go:build linux

package udpio

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// SetSegment turns on UDP generic segmentation offload (UDP_SEGMENT) on a
// connected uc: from then on one write of k x size bytes leaves as k
// datagrams of size bytes (the last may be shorter), built by the kernel
// from one system call. 0 turns it off.
func SetSegment(uc *net.UDPConn, size int) error {
	return setUDPOpt(uc, unix.UDP_SEGMENT, size, "UDP_SEGMENT")
}

// SetGRO turns on UDP receive coalescing (UDP_GRO) on uc: datagrams of
// one flow that a device's GRO merged are read as one buffer of
// back-to-back datagrams, all of one size but the last.
func SetGRO(uc *net.UDPConn, on bool) error {
	v := 0
	if on {
		v = 1
	}
	return setUDPOpt(uc, unix.UDP_GRO, v, "UDP_GRO")
}

func setUDPOpt(uc *net.UDPConn, opt, v int, name string) error {
	rc, err := uc.SyscallConn()
	if err != nil {
		return fmt.Errorf("udpio: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, opt, v) }); err != nil {
		return fmt.Errorf("udpio: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("udpio: %s: %w", name, serr)
	}
	return nil
}
