//go:build !(linux && (amd64 || arm64 || riscv64 || ppc64le || loong64))

package mediaproxy

import (
	"errors"
	"net/netip"
)

type rawSender struct{}

func newRawSender(int) (*rawSender, error) { return nil, errors.New("raw send needs Linux") }

func (r *rawSender) add(*stream, []byte, netip.AddrPort, netip.AddrPort) bool { return false }
func (r *rawSender) flush(func(*stream, int)) int                             { return 0 }
func (r *rawSender) close()                                                   {}
