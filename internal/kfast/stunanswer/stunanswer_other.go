//go:build !linux || !(386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package stunanswer

import "github.com/traverse-rtc/traverse/internal/kfast"

// Answerer is not available on this platform.
type Answerer struct{}

// New returns kfast.ErrUnsupported.
func New(Config) (*Answerer, error) { return nil, kfast.ErrUnsupported }

// Answered returns kfast.ErrUnsupported.
func (*Answerer) Answered() (kfast.Counts, error) { return kfast.Counts{}, kfast.ErrUnsupported }

// Close does nothing.
func (*Answerer) Close() error { return nil }
