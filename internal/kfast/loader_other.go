//go:build !linux || !(386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package kfast

// Loader is the kernel fast path's loader; on this platform Load always
// fails.
type Loader struct{}

// Load returns ErrUnsupported: the programs are built for Linux on
// little-endian machines only.
func Load(Config) (*Loader, error) { return nil, ErrUnsupported }

// Close does nothing.
func (*Loader) Close() error { return nil }
