//go:build !(linux && (amd64 || arm64 || riscv64 || ppc64le || loong64))

package udpio

import (
	"errors"
	"net"
)

// Conn is a UDP socket. On this platform it moves one datagram per system
// call.
type Conn struct {
	uc *net.UDPConn
	v6 bool
}

// New wraps uc. The Conn owns uc from then on.
func New(uc *net.UDPConn, _ int) (*Conn, error) {
	la, _ := uc.LocalAddr().(*net.UDPAddr)
	return &Conn{uc: uc, v6: la != nil && la.IP.To4() == nil}, nil
}

func setReusePort(uintptr) error { return errors.New("udpio: SO_REUSEPORT is not supported here") }

// ReadBatch reads one datagram into msgs[0].
func (c *Conn) ReadBatch(msgs []Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	n, a, err := c.uc.ReadFromUDPAddrPort(msgs[0].Buf[:cap(msgs[0].Buf)])
	if err != nil {
		return 0, err
	}
	msgs[0].N, msgs[0].Addr = n, unmap(a)
	return 1, nil
}

// WriteBatch sends every message, one per system call.
func (c *Conn) WriteBatch(msgs []Message) (int, error) {
	sent := 0
	var first error
	for i := range msgs {
		if _, err := c.uc.WriteToUDPAddrPort(msgs[i].Buf[:msgs[i].N], c.fixAddr(msgs[i].Addr)); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return sent, err
			}
			if first == nil {
				first = err
			}
			continue
		}
		sent++
	}
	return sent, first
}

// enableCoalesce does nothing here: UDP GSO and GRO are Linux's.
func (c *Conn) enableCoalesce() {}

// Coalescing reports whether reads coalesce and writes segment: never
// here.
func (c *Conn) Coalescing() (reads, writes bool) { return false, false }
