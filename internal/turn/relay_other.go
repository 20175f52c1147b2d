//go:build !(linux && (amd64 || arm64 || riscv64 || ppc64le || loong64))

package turn

import (
	"net"
	"net/netip"
	"syscall"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

var errAddrInUse = udpio.ErrAddrInUse

type engine struct {
	laddr netip.AddrPort
	v6    bool
}

func (e *engine) WriteTo([]byte, netip.AddrPort) error { return ErrUnsupported }

func newEngine(*Server, int, netip.AddrPort, bool) (*engine, error) { return nil, ErrUnsupported }
func (e *engine) open(netip.AddrPort) (int, error)                  { return -1, ErrUnsupported }
func (e *engine) add(int) error                                     { return ErrUnsupported }
func (e *engine) remove(int)                                        {}
func (e *engine) wake()                                             {}
func (e *engine) close()                                            {}
func (e *engine) run()                                              {}

func (s *Server) adoptStream(net.Conn, *streamConn) bool  { return false }
func (e *engine) addStream(*streamConn) error             { return ErrUnsupported }
func (e *engine) dropStream(*streamConn)                  {}
func (sc *streamConn) enqueueLoop([]byte) bool            { return false }
func closeFD(int) error                                   { return ErrUnsupported }
func shutdownFD(int) error                                { return ErrUnsupported }
func reuseControl(string, string, syscall.RawConn) error  { return ErrUnsupported }
func (e *engine) handOver(*streamConn, *peerConn, []byte) {}
func socketRoom(syscall.RawConn, int) bool                { return false }
