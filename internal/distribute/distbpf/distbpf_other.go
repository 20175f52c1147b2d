//go:build !(linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64))

package distbpf

import (
	"errors"

	"github.com/traverse-rtc/traverse/internal/distribute"
)

// Path is the name of this path.
const Path = "ebpf"

// ErrUnsupported is returned by New where eBPF is not available.
var ErrUnsupported = errors.New("distbpf: eBPF is not supported on this platform")

// Config configures the kernel path.
type Config struct {
	NetNS      int
	Clsact     bool
	MaxStreams int
	Interfaces []string
}

// Kernel is not available here.
type Kernel struct{ distribute.Kernel }

// New returns ErrUnsupported.
func New(Config) (*Kernel, error) { return nil, ErrUnsupported }
