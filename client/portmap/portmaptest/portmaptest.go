// Package portmaptest is an in-process PCP (RFC 6887) and NAT-PMP (RFC
// 6886) gateway for tests of code that uses package portmap: it grants UDP
// mappings, records every request, and can refuse, shorten lifetimes or
// move external ports on renewal. It maps nothing in any kernel: packets
// sent to a mapping it granted go nowhere.
package portmaptest

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
)

// Config configures a Gateway. Zero values select the defaults.
type Config struct {
	// Addr is where it listens (default 127.0.0.1, a free port).
	Addr netip.AddrPort
	// External is the external address it reports (default 192.0.2.1).
	External netip.Addr
	// MaxLifetime caps granted lifetimes, in seconds (default: none).
	MaxLifetime uint32
	// PCPResult and PMPResult, when not zero, are the result codes of
	// every MAP / mapping answer (a refusal).
	PCPResult byte
	PMPResult uint16
	// NoPCP makes it a NAT-PMP-only server: it answers PCP requests with
	// a NAT-PMP "unsupported version" (RFC 6887 section 9).
	NoPCP bool
	// OnRequest, when set, runs before each answer (on the server's
	// goroutine) with the client's address: tests forge answers there.
	OnRequest func(g *Gateway, from netip.AddrPort, req Request)
}

// Request is one request the gateway received.
type Request struct {
	Protocol     string // "pcp" or "nat-pmp"
	Opcode       byte
	InternalPort uint16
	Lifetime     uint32
}

// Gateway is the server.
type Gateway struct {
	cfg  Config
	conn *net.UDPConn
	done chan struct{}

	mu       sync.Mutex // guards the fields below
	requests []Request
	mappings map[uint16]uint16 // internal port -> external port
	moved    bool              // next renewal gets a new external port
	nextPort uint16
}

// New starts a gateway.
func New(cfg Config) (*Gateway, error) {
	if !cfg.Addr.IsValid() {
		cfg.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0)
	}
	if !cfg.External.IsValid() {
		cfg.External = netip.AddrFrom4([4]byte{192, 0, 2, 1})
	}
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(cfg.Addr))
	if err != nil {
		return nil, err
	}
	g := &Gateway{cfg: cfg, conn: conn, done: make(chan struct{}), mappings: map[uint16]uint16{}, nextPort: 40000}
	go g.serve()
	return g, nil
}

// Addr is the gateway's address (its IP is the portmap.Config Gateway,
// its port the PMPPort).
func (g *Gateway) Addr() netip.AddrPort {
	return netip.MustParseAddrPort(g.conn.LocalAddr().String())
}

// Requests returns the requests received so far.
func (g *Gateway) Requests() []Request {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]Request(nil), g.requests...)
}

// Mappings returns the live mappings, internal port to external port.
func (g *Gateway) Mappings() map[uint16]uint16 {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[uint16]uint16, len(g.mappings))
	for k, v := range g.mappings {
		out[k] = v
	}
	return out
}

// MovePorts makes the next request for an existing mapping get a new
// external port (a router that lost its table).
func (g *Gateway) MovePorts() {
	g.mu.Lock()
	g.moved = true
	g.mu.Unlock()
}

// Close stops the gateway.
func (g *Gateway) Close() error {
	err := g.conn.Close()
	<-g.done
	return err
}

func (g *Gateway) serve() {
	defer close(g.done)
	buf := make([]byte, 1500)
	for {
		n, from, err := g.conn.ReadFromUDPAddrPort(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil || n < 2 {
			continue
		}
		if out := g.answer(from, buf[:n]); out != nil {
			_, _ = g.conn.WriteToUDPAddrPort(out, from)
		}
	}
}

// grant picks the external port of internal (keeping it, or the suggested
// one when free) and records or deletes the mapping.
func (g *Gateway) grant(internal, suggested uint16, lifetime uint32) (uint16, uint32) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if lifetime == 0 {
		delete(g.mappings, internal)
		return 0, 0
	}
	if g.cfg.MaxLifetime != 0 {
		lifetime = min(lifetime, g.cfg.MaxLifetime)
	}
	ext, ok := g.mappings[internal]
	if !ok || g.moved {
		g.moved = false
		taken := map[uint16]bool{}
		for _, e := range g.mappings {
			taken[e] = true
		}
		if suggested != 0 && !taken[suggested] && !ok {
			ext = suggested
		} else {
			for g.nextPort++; taken[g.nextPort]; g.nextPort++ {
			}
			ext = g.nextPort
		}
		g.mappings[internal] = ext
	}
	return ext, lifetime
}

func (g *Gateway) record(from netip.AddrPort, r Request) {
	g.mu.Lock()
	g.requests = append(g.requests, r)
	g.mu.Unlock()
	if g.cfg.OnRequest != nil {
		g.cfg.OnRequest(g, from, r)
	}
}

func (g *Gateway) answer(from netip.AddrPort, b []byte) []byte {
	switch b[0] {
	case 0:
		return g.answerPMP(from, b)
	case 2:
		if g.cfg.NoPCP {
			return []byte{0, 128 + b[1]&0x7f, 0, 1, 0, 0, 0, 1}
		}
		return g.answerPCP(from, b)
	}
	return nil
}

func (g *Gateway) answerPMP(from netip.AddrPort, b []byte) []byte {
	switch {
	case b[1] == 0:
		g.record(from, Request{Protocol: "nat-pmp", Opcode: 0})
		out := []byte{0, 128, 0, 0, 0, 0, 0, 1}
		a := g.cfg.External.As4()
		return append(out, a[:]...)
	case b[1] == 1 && len(b) >= 12:
		internal := binary.BigEndian.Uint16(b[4:])
		lifetime := binary.BigEndian.Uint32(b[8:])
		g.record(from, Request{Protocol: "nat-pmp", Opcode: 1, InternalPort: internal, Lifetime: lifetime})
		out := []byte{0, 129}
		out = binary.BigEndian.AppendUint16(out, g.cfg.PMPResult)
		out = binary.BigEndian.AppendUint32(out, 1)
		var ext uint16
		if g.cfg.PMPResult == 0 {
			ext, lifetime = g.grant(internal, binary.BigEndian.Uint16(b[6:]), lifetime)
		}
		out = binary.BigEndian.AppendUint16(out, internal)
		out = binary.BigEndian.AppendUint16(out, ext)
		return binary.BigEndian.AppendUint32(out, lifetime)
	}
	return nil
}

func (g *Gateway) answerPCP(from netip.AddrPort, b []byte) []byte {
	if len(b) < 24 {
		return nil
	}
	op := b[1] & 0x7f
	lifetime := binary.BigEndian.Uint32(b[4:])
	hdr := func(result byte, lifetime uint32) []byte {
		out := []byte{2, 0x80 | op, 0, result}
		out = binary.BigEndian.AppendUint32(out, lifetime)
		out = binary.BigEndian.AppendUint32(out, 1) // epoch
		return append(out, make([]byte, 12)...)
	}
	switch {
	case op == 0:
		g.record(from, Request{Protocol: "pcp", Opcode: 0})
		return hdr(0, 0)
	case op == 1 && len(b) >= 60:
		p := b[24:60]
		internal := binary.BigEndian.Uint16(p[16:])
		g.record(from, Request{Protocol: "pcp", Opcode: 1, InternalPort: internal, Lifetime: lifetime})
		var ext uint16
		if g.cfg.PCPResult == 0 {
			ext, lifetime = g.grant(internal, binary.BigEndian.Uint16(p[18:]), lifetime)
		}
		out := hdr(g.cfg.PCPResult, lifetime)
		out = append(out, p[:12]...) // nonce
		out = append(out, p[12], 0, 0, 0)
		out = binary.BigEndian.AppendUint16(out, internal)
		out = binary.BigEndian.AppendUint16(out, ext)
		a := g.cfg.External.As16()
		return append(out, a[:]...)
	}
	return nil
}

// Send sends b to to from the gateway's own socket (a test's forged or
// stray answer that passes the source check).
func (g *Gateway) Send(to netip.AddrPort, b []byte) error {
	_, err := g.conn.WriteToUDPAddrPort(b, to)
	return err
}
