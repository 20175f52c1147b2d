//go:build !(linux && (amd64 || arm64 || riscv64 || ppc64le || loong64))

package mediaproxy

import (
	"errors"
	"net"
	"net/netip"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

// poller is unused where there is no epoll: one goroutine per inside socket.
type poller struct{}

func (p *Proxy) startPoller() error { return nil }
func (p *Proxy) stopPoller()        {}
func (p *Proxy) closePoller()       {}

func (p *Proxy) startInside(s *stream) {
	p.wg.Add(2)
	go p.insideLoop(s, false)
	go p.insideLoop(s, true)
}

func (p *Proxy) stopInside(*stream) {}

// insideLoop reads one inside port in its own goroutine and sends what the
// server sends out of the fixed port to the stream's client. On Linux one
// epoll loop serves every inside socket instead and batches the sends
// (inside_linux.go).
func (p *Proxy) insideLoop(s *stream, rtcp bool) {
	defer p.wg.Done()
	conn, out := s.rtpConn, p.rtp
	if rtcp {
		conn, out = s.rtcpConn, p.rtcp
	}
	buf := make([]byte, udpio.MaxPacket)
	for {
		n, src, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		dst, ok := p.fromInside(s, rtcp, netip.AddrPortFrom(src.Addr().Unmap(), src.Port()))
		if !ok {
			continue
		}
		if err := out.WriteTo(buf[:n], dst); err != nil {
			p.c.DropWriteError.Add(1)
			continue
		}
		p.sentToClient(s, rtcp, n)
	}
}
