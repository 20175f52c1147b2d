//go:build !linux || !(386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package distribution

import (
	"github.com/traverse-rtc/traverse/internal/distribute"
	"github.com/traverse-rtc/traverse/internal/kfast"
)

// Path is the name of this path.
const Path = "ebpf"

// Config configures the kernel path.
type Config struct {
	NetNS      int
	Clsact     bool
	MaxStreams int
	Interfaces []string
}

// Kernel is not available here.
type Kernel struct{ distribute.Kernel }

// New returns kfast.ErrUnsupported.
func New(Config) (*Kernel, error) { return nil, kfast.ErrUnsupported }
