//go:build !linux

package udpio

import (
	"errors"
	"net"
)

// SetSegment is UDP_SEGMENT, on Linux only.
func SetSegment(*net.UDPConn, int) error { return errors.ErrUnsupported }

// SetGRO is UDP_GRO, on Linux only.
func SetGRO(*net.UDPConn, bool) error { return errors.ErrUnsupported }
