//go:build !linux || !(386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package turnchannel

import (
	"time"

	"github.com/traverse-rtc/traverse/internal/kfast"
	"github.com/traverse-rtc/traverse/internal/turn"
)

// Offloader is the eBPF TURN offloader; on this platform New always fails.
type Offloader struct{}

var _ turn.Offloader = (*Offloader)(nil)

// New returns ErrUnsupported.
func New(cfg Config) (*Offloader, error) {
	if err := cfg.Validate(defaultMaxFlows); err != nil {
		return nil, err
	}
	return nil, kfast.ErrUnsupported
}

// Install returns ErrUnsupported.
func (*Offloader) Install(turn.OffloadFlow, time.Time) error { return kfast.ErrUnsupported }

// Remove returns ErrUnsupported.
func (*Offloader) Remove(turn.OffloadFlow) error { return kfast.ErrUnsupported }

// Counters returns ErrUnsupported.
func (*Offloader) Counters(turn.OffloadFlow) (turn.OffloadCounts, turn.OffloadCounts, error) {
	return turn.OffloadCounts{}, turn.OffloadCounts{}, kfast.ErrUnsupported
}

// Flows returns 0.
func (*Offloader) Flows() int { return 0 }

// Close does nothing.
func (*Offloader) Close() error { return nil }
