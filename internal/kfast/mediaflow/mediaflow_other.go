//go:build !linux || !(386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package mediaflow

import (
	"github.com/traverse-rtc/traverse/internal/kfast"
	"github.com/traverse-rtc/traverse/internal/mediaproxy"
)

// Offloader is the eBPF offloader; on this platform New always fails.
type Offloader struct{}

var _ mediaproxy.Offloader = (*Offloader)(nil)

// New returns ErrUnsupported: the program is built for Linux on
// little-endian machines only.
func New(cfg Config) (*Offloader, error) {
	if err := cfg.Validate(defaultMaxFlows); err != nil {
		return nil, err
	}
	return nil, kfast.ErrUnsupported
}

// Offload returns ErrUnsupported.
func (*Offloader) Offload(mediaproxy.Flow) error { return kfast.ErrUnsupported }

// Remove returns ErrUnsupported.
func (*Offloader) Remove(mediaproxy.Flow) error { return kfast.ErrUnsupported }

// Stats returns ErrUnsupported.
func (*Offloader) Stats(mediaproxy.Flow) (uint64, uint64, error) { return 0, 0, kfast.ErrUnsupported }

// Flows returns 0.
func (*Offloader) Flows() int { return 0 }

// Close does nothing.
func (*Offloader) Close() error { return nil }
