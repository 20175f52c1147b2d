package mediaproxy

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
)

// PortRange is an inclusive range of inside UDP ports. The pool hands out
// pairs: an even RTP port and the odd RTCP port above it (RFC 3550
// section 11), so a range of N ports holds N/2 streams.
type PortRange struct{ Low, High uint16 }

// ParsePortRange parses "LOW-HIGH".
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, ok := strings.Cut(s, "-")
	if !ok {
		return PortRange{}, fmt.Errorf("%w: port range %q is not LOW-HIGH", ErrConfig, s)
	}
	l, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	h, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if err1 != nil || err2 != nil || l == 0 || l > h {
		return PortRange{}, fmt.Errorf("%w: port range %q", ErrConfig, s)
	}
	return PortRange{uint16(l), uint16(h)}, nil
}

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Low, r.High) }

// pairs is the number of RTP/RTCP pairs the range holds.
func (r PortRange) pairs() int {
	first := int(r.Low+1) &^ 1
	if int(r.High) < first+1 {
		return 0
	}
	return (int(r.High)-first-1)/2 + 1
}

// portPool allocates inside port pairs and binds their sockets.
type portPool struct {
	ip     netip.Addr
	r      PortRange
	random bool

	mu     sync.Mutex // guards inUse and next
	inUse  []bool     // by pair index
	next   int
	active int
}

func newPortPool(ip netip.Addr, r PortRange, random bool) *portPool {
	return &portPool{ip: ip, r: r, random: random, inUse: make([]bool, r.pairs())}
}

func (p *portPool) port(i int) uint16 { return uint16(int(p.r.Low+1)&^1 + 2*i) }

// alloc finds a free pair, binds both sockets and returns them with the
// RTP port. Ports another process holds are skipped.
func (p *portPool) alloc() (rtp, rtcp *net.UDPConn, port uint16, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.inUse)
	start := p.next
	if p.random && n > 0 {
		start = rand.IntN(n)
	}
	network := "udp4"
	if p.ip.Is6() {
		network = "udp6"
	}
	for k := 0; k < n; k++ {
		i := (start + k) % n
		if p.inUse[i] {
			continue
		}
		port := p.port(i)
		a, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.ip, port)))
		if err != nil {
			continue
		}
		b, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.ip, port+1)))
		if err != nil {
			a.Close()
			continue
		}
		p.inUse[i] = true
		p.active++
		p.next = (i + 1) % n
		return a, b, port, nil
	}
	return nil, nil, 0, ErrNoPorts
}

func (p *portPool) release(port uint16) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := (int(port) - int(p.port(0))) / 2
	if i >= 0 && i < len(p.inUse) && p.inUse[i] {
		p.inUse[i] = false
		p.active--
	}
}

func (p *portPool) inUseCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.active
}

// held reports whether port belongs to a pair in use.
func (p *portPool) held(port uint16) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if port < p.port(0) {
		return false
	}
	i := (int(port) - int(p.port(0))) / 2
	return i < len(p.inUse) && p.inUse[i]
}
