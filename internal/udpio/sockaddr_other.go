//go:build !(linux && (amd64 || arm64 || riscv64 || ppc64le || loong64))

package udpio

import (
	"errors"
	"net/netip"
)

// ErrUnsupported is returned by the descriptor-level calls (OpenFD,
// SendTo, NewSet, NewRawSender) where they are not implemented.
var ErrUnsupported = errors.New("udpio: not supported on this platform")

// ErrAddrInUse is returned by OpenFD when the address is taken.
var ErrAddrInUse = errors.New("udpio: address in use")

// Sockaddr is a destination encoded once for SendTo. Here it only keeps
// the address: SendTo is not implemented.
type Sockaddr struct{ ap netip.AddrPort }

// Set stores ap; false when the family cannot reach it.
func (sa *Sockaddr) Set(ap netip.AddrPort, v6 bool) bool {
	if !ap.Addr().IsValid() || (!v6 && !ap.Addr().Unmap().Is4()) {
		return false
	}
	sa.ap = ap
	return true
}

// AddrPort returns the stored address.
func (sa *Sockaddr) AddrPort() netip.AddrPort { return sa.ap }

// SendTo is not implemented here.
func SendTo(int, []byte, *Sockaddr) error { return ErrUnsupported }
