//go:build !(linux && (amd64 || arm64 || riscv64 || ppc64le || loong64))

package mediaproxy

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
