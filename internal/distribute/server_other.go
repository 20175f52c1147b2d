//go:build !(linux && (amd64 || arm64 || riscv64 || ppc64le || loong64))

package distribute

import (
	"context"
	"net/netip"
)

// PathUserspace names the batched user-space data path (Server.Path).
const PathUserspace = "userspace"

// Server is not implemented on this platform.
type Server struct{}

// New returns ErrUnsupported.
func New(Config) (*Server, error) { return nil, ErrUnsupported }

// Table is nil here.
func (s *Server) Table() *Table { return nil }

// Addrs is empty here.
func (s *Server) Addrs() []netip.AddrPort { return nil }

// Path names the data path in use.
func (s *Server) Path() string { return PathUserspace }

// Ready returns ErrUnsupported.
func (s *Server) Ready() error { return ErrUnsupported }

// Run returns ErrUnsupported.
func (s *Server) Run(context.Context) error { return ErrUnsupported }

// Close does nothing.
func (s *Server) Close() error { return nil }
