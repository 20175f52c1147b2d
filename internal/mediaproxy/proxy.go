// Package mediaproxy is the fixed-port media proxy of the SIP border
// gateway (the three-port SIP boundary): every outside client sends RTP to ONE fixed port and
// RTCP to ONE fixed port, whatever the number of calls; the proxy
// demultiplexes by SSRC (RFC 3550 section 5.1; RTCP by the sender SSRC,
// section 6.4) to a per-stream inside port drawn from a pool, from which it
// talks to the inside server's ordinary per-call media ports.
//
// A signaling proxy drives it with descriptor headers (see Descriptor):
// direction flags, SSRC, call id and stream, and the endpoints from SDP. The
// proxy keeps {client address:port, SSRC, inside port, server address:port}
// per stream.
//
// # SSRC learning and collisions
//
// A stream whose SDP declares its SSRC (a=ssrc, RFC 5576) is indexed by it.
// A stream without one waits for a latch: the first RTP packet that arrives
// on the fixed port from the client's signaled IP address with an SSRC no
// stream holds binds that SSRC and that source address:port to the stream
// (a waiting stream whose signaled port equals the source port is preferred,
// then the oldest). Packets from any other address never latch, so a third
// party cannot steal a stream by guessing an SSRC. Every stream, declared or
// learnt, is latched to one source address:port, and several streams may
// share an SSRC (every SIPp call replays the same capture): the SSRC selects
// the candidates, the source address picks among them. A packet whose SSRC
// and source match no stream is dropped and counted.
//
// # Where media may go
//
// Nothing is sent to an outside client before its own media latched the
// stream (symmetric RTP, RFC 4961), unless Config.SendBeforeLatch; every
// outside address a descriptor names, and every latched source, passes
// Config.Policy (internal/addrpolicy's deny list) and is none of the
// process's own sockets. See policy.go and docs/mediaproxy.md.
//
// # Kernel offload
//
// After OffloadAfter packets in each direction, a latched stream's RTP flow
// is handed to an Offloader (nftables rules or an eBPF program), after which user
// space no longer sees it; the offloader's counters keep the session alive
// and visible. RTCP stays in user space (a few packets per second).
package mediaproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/addrpolicy"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

// Config configures a Proxy. Zero values take the defaults documented.
type Config struct {
	// RTP and RTCP are the two fixed outside media addresses. Port 0
	// picks a free port (tests). Required.
	RTP, RTCP netip.AddrPort
	// InsideIP is the address of the inside ports. Required.
	InsideIP netip.Addr
	// InsidePorts is the inside pool (default 30000-39999). Each stream
	// holds two ports (RTP even, RTCP odd) and two sockets.
	InsidePorts PortRange
	// RandomPorts picks a random free pair instead of the next free one.
	RandomPorts bool
	// MediaTimeout ends a call whose streams carried no packet for this
	// long (default 30s). SetupTimeout ends one that never carried any
	// (default 90s, longer than ringing usually lasts).
	MediaTimeout, SetupTimeout time.Duration
	// Tick is how often timeouts and kernel counters are checked (default
	// 1s). It also sets the resolution of the activity clock.
	Tick time.Duration
	// Offloader, when set, takes flows into the kernel after OffloadAfter
	// packets in each direction (default 50, one second of 20 ms audio).
	Offloader    Offloader
	OffloadAfter uint64
	// NoRawSend sends inside-bound RTP with one sendto per packet from the
	// stream's socket instead of batches through a raw socket (which needs
	// CAP_NET_RAW and is skipped without it).
	NoRawSend bool
	// ReadBuffer sizes the fixed sockets' SO_RCVBUF (default 4 MiB): one
	// socket carries every call, so it must absorb bursts.
	ReadBuffer int
	// Policy decides which addresses an outside party may have media sent
	// to (and latch from). The zero value is addrpolicy's default deny list
	// (loopback, unspecified, RFC 1918, CGNAT, link-local and metadata,
	// multicast, broadcast, ...), which is right for a gateway on the
	// internet; Allow and Deny prefixes and Loopback open it for labs and
	// for outside parties on private networks. The proxy adds its own
	// addresses and refuses its own sockets whatever the policy allows.
	Policy addrpolicy.Filter
	// SendBeforeLatch sends inside media to an outside party's signaled
	// (and policy-checked) address before that party's own media arrived.
	// Default false: nothing is sent to an outside party until its first
	// packet latched the stream (symmetric RTP, RFC 4961), so SDP alone
	// can never aim the proxy at anyone. Only for peers that never send
	// first (an echo-only test client); it lets a caller reflect the
	// server's media at any address the policy allows.
	SendBeforeLatch bool
	// Registerer receives the proxy's metrics (none when nil).
	Registerer prometheus.Registerer
	Log        *slog.Logger
	// OnTimeout is called (from the proxy's own goroutine) with the call
	// id of each call ended for lack of media, after its streams are gone.
	OnTimeout func(callID string)
}

func (c *Config) validate() error {
	if !c.RTP.IsValid() || !c.RTCP.IsValid() {
		return fmt.Errorf("%w: RTP and RTCP addresses are required", ErrConfig)
	}
	if !c.InsideIP.IsValid() {
		return fmt.Errorf("%w: inside IP is required", ErrConfig)
	}
	if c.InsidePorts == (PortRange{}) {
		c.InsidePorts = PortRange{30000, 39999}
	}
	if c.InsidePorts.pairs() == 0 {
		return fmt.Errorf("%w: inside port range %s holds no RTP/RTCP pair", ErrConfig, c.InsidePorts)
	}
	if c.MediaTimeout <= 0 {
		c.MediaTimeout = 30 * time.Second
	}
	if c.SetupTimeout <= 0 {
		c.SetupTimeout = 90 * time.Second
	}
	if c.Tick <= 0 {
		c.Tick = time.Second
	}
	if c.OffloadAfter == 0 {
		c.OffloadAfter = 50
	}
	if c.ReadBuffer == 0 {
		c.ReadBuffer = 4 << 20
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Reply is the proxy's answer to a descriptor.
type Reply struct {
	// InsideRTP and InsideRTCP are the stream's inside ports (the port to
	// put in inside-bound SDP); FixedRTP and FixedRTCP the outside ones.
	InsideRTP, InsideRTCP uint16
	FixedRTP, FixedRTCP   uint16
	// SSRC is the stream's SSRC when known (declared or latched).
	SSRC      uint32
	SSRCKnown bool
	// Forwarded packets client->server and server->client, user space and
	// kernel together.
	ToServer, ToClient uint64
	Offloaded          bool
}

// Counters are the proxy's totals, readable without Prometheus.
type Counters struct {
	RTPIn, RTPOut     atomic.Uint64 // outside->inside and inside->outside RTP, user space
	RTCPIn, RTCPOut   atomic.Uint64
	BytesIn, BytesOut atomic.Uint64
	DropUnknownSSRC   atomic.Uint64
	DropMalformed     atomic.Uint64
	DropNoPeer        atomic.Uint64 // the other side's address is not known yet
	DropNotLatched    atomic.Uint64 // to an outside party that has not sent its own media yet
	DropRefusedSource atomic.Uint64 // outside packet from a source the policy refuses to latch to
	RefusedPolicy     atomic.Uint64 // signaled outside addresses the policy refused
	RefusedOwn        atomic.Uint64 // signaled addresses naming the proxy's own sockets
	DropNotServer     atomic.Uint64 // inside packet from an address other than the server
	DropWriteError    atomic.Uint64
	Latched           atomic.Uint64 // SSRCs learnt by latch
	SSRCChanges       atomic.Uint64 // new SSRCs accepted from an already latched source
	Timeouts          atomic.Uint64
	Offloads          atomic.Uint64
	OffloadErrors     atomic.Uint64
	KernelPackets     atomic.Uint64 // packets forwarded by the kernel for live flows (last read)
}

// Proxy is a running media proxy. Its methods are safe for concurrent use.
type Proxy struct {
	cfg  Config
	log  *slog.Logger
	rtp  *udpio.Conn
	rtcp *udpio.Conn
	pool *portPool

	mu       sync.RWMutex // guards calls, bySSRC, awaiting, closed, and stream fields marked "p.mu"
	calls    map[string]map[uint8]*stream
	bySSRC   map[uint32][]*stream
	bySrc    map[netip.AddrPort]*stream // latched RTP sources, for SSRC changes
	awaiting map[netip.Addr][]*stream
	closed   bool

	own      atomic.Pointer[ownState] // the destination policy (policy.go)
	now      atomic.Int64             // coarse clock, unix nanoseconds, advanced by the janitor
	c        Counters
	offloadq chan *stream
	done     chan struct{}
	wg       sync.WaitGroup
	once     sync.Once
	poller   *poller    // the inside sockets' reader (nil: one goroutine per socket)
	raw      *rawSender // batched inside-bound RTP sender (nil: sendto per packet)
}

// stream is one media stream (one SSRC, one inside port pair).
type stream struct {
	callID        string
	index         uint8
	kind          Kind
	callerOutside bool
	insidePort    uint16
	rtpConn       *net.UDPConn
	rtcpConn      *net.UDPConn
	rtpFD, rtcpFD int // raw descriptors registered with the poller (Linux)
	created       int64

	route atomic.Pointer[route] // replaced whole under p.mu

	ssrc      uint32   // p.mu
	ssrcKnown bool     // p.mu
	aliases   []uint32 // p.mu: further SSRCs seen from the latched source

	last               atomic.Int64
	toServer, toClient atomic.Uint64 // user-space RTP packets
	offload            atomic.Uint32 // offloadNone, offloadQueued, offloadDone, offloadFailed
	flow               Flow          // set before offload becomes offloadDone
	kernelPkts         atomic.Uint64
	gone               atomic.Bool
}

// maxAliases bounds the extra SSRCs one stream accepts from its latched
// source.
const maxAliases = 4

const (
	offloadNone uint32 = iota
	offloadQueued
	offloadDone
	offloadFailed
)

// route is a stream's addresses; the readers load it without locks.
type route struct {
	client, clientRTCP       netip.AddrPort // signaled in SDP
	clientSrc, clientRTCPSrc netip.AddrPort // latched sources (zero until latched)
	// clientRTCPDst is where RTCP goes once RTP latched but RTCP has not:
	// the latched IP with the signaled RTCP port (checked).
	clientRTCPDst      netip.AddrPort
	server, serverRTCP netip.AddrPort
	serverSrc          netip.AddrPort // observed source of the server's RTP
}

// New binds the fixed ports and starts the proxy.
func New(cfg Config) (*Proxy, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	o := udpio.Options{ReadBuffer: cfg.ReadBuffer, WriteBuffer: cfg.ReadBuffer}
	network := "udp4"
	if cfg.RTP.Addr().Is6() {
		network = "udp6"
	}
	rtp, err := udpio.Listen(context.Background(), network, cfg.RTP.String(), o)
	if err != nil {
		return nil, err
	}
	rtcp, err := udpio.Listen(context.Background(), network, cfg.RTCP.String(), o)
	if err != nil {
		rtp.Close()
		return nil, err
	}
	p := &Proxy{
		cfg: cfg, log: cfg.Log, rtp: rtp, rtcp: rtcp,
		pool:     newPortPool(cfg.InsideIP, cfg.InsidePorts, cfg.RandomPorts),
		calls:    map[string]map[uint8]*stream{},
		bySSRC:   map[uint32][]*stream{},
		bySrc:    map[netip.AddrPort]*stream{},
		awaiting: map[netip.Addr][]*stream{},
		offloadq: make(chan *stream, 4096),
		done:     make(chan struct{}),
	}
	p.own.Store(newOwnState(&p.cfg, rtp.LocalAddr(), rtcp.LocalAddr()))
	p.now.Store(time.Now().UnixNano())
	if cfg.Registerer != nil {
		if err := p.register(cfg.Registerer); err != nil {
			rtp.Close()
			rtcp.Close()
			return nil, err
		}
	}
	// The raw socket is made here, not in the loop's goroutine, so that it
	// lives in the caller's network namespace like the other sockets.
	if !cfg.NoRawSend {
		if raw, err := newRawSender(udpio.DefaultBatch); err != nil {
			p.log.Info("inside-bound RTP goes out with one sendto per packet", "raw socket", err)
		} else {
			p.raw = raw
		}
	}
	if err := p.startPoller(); err != nil {
		rtp.Close()
		rtcp.Close()
		if p.raw != nil {
			p.raw.close()
		}
		return nil, err
	}
	p.wg.Add(3)
	go p.outsideLoop(p.rtp, false)
	go p.outsideLoop(p.rtcp, true)
	go p.janitor()
	if cfg.Offloader != nil {
		p.wg.Add(1)
		go p.offloadWorker()
	}
	return p, nil
}

// RTPAddr and RTCPAddr are the bound fixed outside addresses.
func (p *Proxy) RTPAddr() netip.AddrPort  { return p.rtp.LocalAddr() }
func (p *Proxy) RTCPAddr() netip.AddrPort { return p.rtcp.LocalAddr() }

// InsideIP is the inside address of the port pool.
func (p *Proxy) InsideIP() netip.Addr { return p.cfg.InsideIP }

// Counters returns the proxy's live counters.
func (p *Proxy) Counters() *Counters { return &p.c }

// Streams returns the number of streams held.
func (p *Proxy) Streams() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	n := 0
	for _, c := range p.calls {
		n += len(c)
	}
	return n
}

// PortsInUse returns the number of inside port pairs allocated.
func (p *Proxy) PortsInUse() int { return p.pool.inUseCount() }

// Run waits for the context to end, then closes the proxy.
func (p *Proxy) Run(done <-chan struct{}) error {
	<-done
	return p.Close()
}

// Close releases every stream, kernel flow and socket and waits for the
// proxy's goroutines. It is idempotent.
func (p *Proxy) Close() error {
	p.once.Do(func() {
		p.mu.Lock()
		p.closed = true
		var all []*stream
		for _, c := range p.calls {
			for _, s := range c {
				all = append(all, s)
			}
		}
		p.calls, p.bySSRC, p.bySrc, p.awaiting = map[string]map[uint8]*stream{}, map[uint32][]*stream{}, map[netip.AddrPort]*stream{}, map[netip.Addr][]*stream{}
		p.mu.Unlock()
		close(p.done)
		p.rtp.Close()
		p.rtcp.Close()
		for _, s := range all {
			p.release(s)
		}
		p.stopPoller()
		p.wg.Wait()
		p.closePoller()
	})
	return nil
}

// Apply executes one control descriptor.
func (p *Proxy) Apply(d *Descriptor) (Reply, error) {
	if err := d.validate(); err != nil {
		return Reply{}, err
	}
	switch d.Op {
	case OpUpsert:
		return p.upsert(d)
	case OpDelete:
		if d.Index == AllStreams {
			return Reply{}, p.DeleteCall(d.CallID)
		}
		return Reply{}, p.deleteStream(d.CallID, d.Index)
	default:
		p.mu.RLock()
		s := p.calls[d.CallID][d.Index]
		var r Reply
		if s != nil {
			r = p.replyLocked(s)
		}
		p.mu.RUnlock()
		if s == nil {
			return Reply{}, ErrNoSession
		}
		return r, nil
	}
}

func (p *Proxy) replyLocked(s *stream) Reply {
	r := Reply{
		InsideRTP: s.insidePort, InsideRTCP: s.insidePort + 1,
		FixedRTP: p.rtp.LocalAddr().Port(), FixedRTCP: p.rtcp.LocalAddr().Port(),
		SSRC: s.ssrc, SSRCKnown: s.ssrcKnown,
		ToServer: s.toServer.Load(), ToClient: s.toClient.Load(),
		Offloaded: s.offload.Load() == offloadDone,
	}
	r.ToServer += s.kernelPkts.Load() / 2
	r.ToClient += s.kernelPkts.Load() - s.kernelPkts.Load()/2
	return r
}

// fdOf returns a socket's descriptor (for the Linux epoll reader).
func fdOf(c *net.UDPConn) int {
	fd := -1
	if rc, err := c.SyscallConn(); err == nil {
		_ = rc.Control(func(f uintptr) { fd = int(f) })
	}
	return fd
}

func rtcpOf(rtp, rtcp netip.AddrPort) netip.AddrPort {
	if rtcp.IsValid() || !rtp.IsValid() {
		return rtcp
	}
	return netip.AddrPortFrom(rtp.Addr(), rtp.Port()+1)
}

func (p *Proxy) upsert(d *Descriptor) (Reply, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return Reply{}, ErrClosed
	}
	s := p.calls[d.CallID][d.Index]
	isNew := s == nil
	if isNew {
		a, b, port, err := p.pool.alloc()
		if err != nil {
			p.mu.Unlock()
			return Reply{}, err
		}
		now := p.now.Load()
		s = &stream{
			callID: d.CallID, index: d.Index, kind: d.Kind, callerOutside: d.CallerOutside(),
			insidePort: port, rtpConn: a, rtcpConn: b, created: now, rtpFD: fdOf(a), rtcpFD: fdOf(b),
		}
		s.last.Store(now)
		s.route.Store(&route{})
		c := p.calls[d.CallID]
		if c == nil {
			c = map[uint8]*stream{}
			p.calls[d.CallID] = c
		}
		c[d.Index] = s
	}
	// Addresses the policy refuses are left out, as if not known: the
	// stream keeps what it had (a rejected re-INVITE changes nothing).
	client, clientRTCP := d.Client, d.ClientRTCP
	if client.IsValid() && p.CheckOutside(client) != nil {
		client, clientRTCP = netip.AddrPort{}, netip.AddrPort{}
	}
	if clientRTCP.IsValid() && p.CheckOutside(clientRTCP) != nil {
		clientRTCP = netip.AddrPort{}
	}
	server, serverRTCP := d.Server, d.ServerRTCP
	if server.IsValid() && p.checkInside(server) != nil {
		p.c.RefusedOwn.Add(1)
		server, serverRTCP = netip.AddrPort{}, netip.AddrPort{}
	}
	if server.IsValid() && p.checkInside(rtcpOf(server, serverRTCP)) != nil {
		p.c.RefusedOwn.Add(1)
		server, serverRTCP = netip.AddrPort{}, netip.AddrPort{}
	}
	old := s.route.Load()
	r := *old
	var reoffload bool
	if client.IsValid() && (client != r.client || rtcpOf(client, clientRTCP) != r.clientRTCP) {
		if r.client.IsValid() && client != r.client {
			// The client moved (a re-INVITE or UPDATE): latch afresh, and
			// send it nothing until its media comes from the new place.
			r.clientSrc, r.clientRTCPSrc, r.clientRTCPDst = netip.AddrPort{}, netip.AddrPort{}, netip.AddrPort{}
			reoffload = true
		}
		r.client, r.clientRTCP = client, rtcpOf(client, clientRTCP)
		if r.clientSrc.IsValid() {
			r.clientRTCPDst = netip.AddrPort{}
			if d := netip.AddrPortFrom(r.clientSrc.Addr(), r.clientRTCP.Port()); p.checkOutside(d) == nil {
				r.clientRTCPDst = d
			}
		}
	}
	if server.IsValid() && (server != r.server || rtcpOf(server, serverRTCP) != r.serverRTCP) {
		if r.server.IsValid() {
			r.serverSrc = netip.AddrPort{}
			reoffload = true
		}
		r.server, r.serverRTCP = server, rtcpOf(server, serverRTCP)
	}
	s.route.Store(&r)
	if old.clientSrc.IsValid() && !r.clientSrc.IsValid() && p.bySrc[old.clientSrc] == s {
		delete(p.bySrc, old.clientSrc)
	}
	if d.Flags&FlagSSRC != 0 && (!s.ssrcKnown || s.ssrc != d.SSRC) {
		p.unindexLocked(s)
		s.ssrc, s.ssrcKnown = d.SSRC, true
		p.indexLocked(s)
	} else if isNew || !old.client.IsValid() || old.client.Addr() != r.client.Addr() {
		p.unindexLocked(s)
		p.indexLocked(s)
	}
	rep := p.replyLocked(s)
	p.mu.Unlock()
	if isNew {
		p.startInside(s)
	}
	if reoffload && s.offload.Load() == offloadDone && p.cfg.Offloader != nil {
		if err := p.cfg.Offloader.Remove(s.flow); err != nil {
			p.log.Warn("remove kernel flow", "call", s.callID, "err", err)
		}
		s.toServer.Store(0)
		s.toClient.Store(0)
		s.offload.Store(offloadNone)
	}
	return rep, nil
}

// indexLocked files s under its SSRC, or under its client IP while it waits
// for a latch.
func (p *Proxy) indexLocked(s *stream) {
	if s.ssrcKnown {
		p.bySSRC[s.ssrc] = append(p.bySSRC[s.ssrc], s)
		for _, a := range s.aliases {
			p.bySSRC[a] = append(p.bySSRC[a], s)
		}
		if src := s.route.Load().clientSrc; src.IsValid() {
			p.bySrc[src] = s
		}
		return
	}
	if c := s.route.Load().client; c.IsValid() {
		p.awaiting[c.Addr()] = append(p.awaiting[c.Addr()], s)
	}
}

func (p *Proxy) unindexLocked(s *stream) {
	if s.ssrcKnown {
		for _, x := range append([]uint32{s.ssrc}, s.aliases...) {
			p.bySSRC[x] = without(p.bySSRC[x], s)
			if len(p.bySSRC[x]) == 0 {
				delete(p.bySSRC, x)
			}
		}
		if src := s.route.Load().clientSrc; src.IsValid() && p.bySrc[src] == s {
			delete(p.bySrc, src)
		}
		return
	}
	for a, l := range p.awaiting {
		if l2 := without(l, s); len(l2) != len(l) {
			if len(l2) == 0 {
				delete(p.awaiting, a)
			} else {
				p.awaiting[a] = l2
			}
		}
	}
}

func without(l []*stream, s *stream) []*stream {
	for i, x := range l {
		if x == s {
			return append(l[:i:i], l[i+1:]...)
		}
	}
	return l
}

// DeleteCall removes every stream of the call. Deleting an unknown call
// returns ErrNoSession.
func (p *Proxy) DeleteCall(callID string) error {
	p.mu.Lock()
	c := p.calls[callID]
	delete(p.calls, callID)
	for _, s := range c {
		p.unindexLocked(s)
	}
	p.mu.Unlock()
	if c == nil {
		return ErrNoSession
	}
	for _, s := range c {
		p.release(s)
	}
	return nil
}

func (p *Proxy) deleteStream(callID string, index uint8) error {
	p.mu.Lock()
	s := p.calls[callID][index]
	if s != nil {
		p.unindexLocked(s)
		delete(p.calls[callID], index)
		if len(p.calls[callID]) == 0 {
			delete(p.calls, callID)
		}
	}
	p.mu.Unlock()
	if s == nil {
		return ErrNoSession
	}
	p.release(s)
	return nil
}

// release frees what a removed stream holds. Its readers end on the
// closed sockets.
func (p *Proxy) release(s *stream) {
	if !s.gone.CompareAndSwap(false, true) {
		return
	}
	if s.offload.Load() == offloadDone && p.cfg.Offloader != nil {
		if err := p.cfg.Offloader.Remove(s.flow); err != nil {
			p.log.Warn("remove kernel flow", "call", s.callID, "err", err)
		}
	}
	p.stopInside(s)
	s.rtpConn.Close()
	s.rtcpConn.Close()
	p.pool.release(s.insidePort)
}

// lookupLocked finds the stream of an outside packet: the SSRC selects
// the candidates and the source address picks among them. rtcp compares
// against the latched RTCP source.
func (p *Proxy) lookupLocked(ssrc uint32, src netip.AddrPort, rtcp bool) *stream {
	for _, s := range p.bySSRC[ssrc] {
		r := s.route.Load()
		if !rtcp && r.clientSrc == src {
			return s
		}
		if rtcp && r.clientRTCPSrc == src {
			return s
		}
	}
	return nil
}

// latch binds an unknown (SSRC, source) pair to a stream if the rules of
// the package documentation allow it, and returns the stream or nil.
func (p *Proxy) latch(ssrc uint32, src netip.AddrPort, rtcp bool) *stream {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.lookupLocked(ssrc, src, rtcp); s != nil {
		return s // another reader latched it meanwhile
	}
	// The source becomes the stream's destination: it passes the same
	// policy as a signaled address (a packet "from" one of the proxy's own
	// sockets, or from an address the policy refuses, never latches).
	if err := p.checkOutside(src); err != nil {
		p.c.DropRefusedSource.Add(1)
		return nil
	}
	set := func(s *stream) {
		r := *s.route.Load()
		if rtcp {
			r.clientRTCPSrc = src
		} else {
			if r.clientSrc.IsValid() && p.bySrc[r.clientSrc] == s {
				delete(p.bySrc, r.clientSrc)
			}
			r.clientSrc = src
			p.bySrc[src] = s
			r.clientRTCPDst = netip.AddrPort{}
			if r.clientRTCP.IsValid() {
				if d := netip.AddrPortFrom(src.Addr(), r.clientRTCP.Port()); p.checkOutside(d) == nil {
					r.clientRTCPDst = d
				}
			}
		}
		s.route.Store(&r)
	}
	if rtcp {
		// RTCP latches to a stream whose RTP already latched from the
		// same IP (RTCP cannot teach an SSRC).
		for _, s := range p.bySSRC[ssrc] {
			r := s.route.Load()
			if !r.clientRTCPSrc.IsValid() && r.clientSrc.IsValid() && r.clientSrc.Addr() == src.Addr() {
				set(s)
				return s
			}
		}
		return nil
	}
	// A new SSRC from a source already latched to a stream (a sender that
	// restarts its SSRC, or plays DTMF from another SSRC) joins that stream:
	// the source address:port already proves whose packet it is.
	if s := p.bySrc[src]; s != nil && s.ssrcKnown {
		if len(s.aliases) >= maxAliases {
			old := s.aliases[0]
			p.bySSRC[old] = without(p.bySSRC[old], s)
			if len(p.bySSRC[old]) == 0 {
				delete(p.bySSRC, old)
			}
			s.aliases = s.aliases[1:]
		}
		s.aliases = append(s.aliases, ssrc)
		p.bySSRC[ssrc] = append(p.bySSRC[ssrc], s)
		p.c.SSRCChanges.Add(1)
		return s
	}
	// A declared (or already learnt) SSRC not yet latched: signaled IP only,
	// the signaled port first.
	var best *stream
	for _, s := range p.bySSRC[ssrc] {
		r := s.route.Load()
		if r.clientSrc.IsValid() || r.client.Addr() != src.Addr() {
			continue
		}
		if r.client == src {
			best = s
			break
		}
		if best == nil {
			best = s
		}
	}
	if best != nil {
		set(best)
		return best
	}
	// A stream without a declared SSRC waiting at this IP learns it.
	l := p.awaiting[src.Addr()]
	for _, s := range l {
		if s.route.Load().client == src {
			best = s
			break
		}
	}
	if best == nil && len(l) > 0 {
		best = l[0]
	}
	if best == nil {
		return nil
	}
	p.unindexLocked(best)
	best.ssrc, best.ssrcKnown = ssrc, true
	p.indexLocked(best)
	set(best)
	p.c.Latched.Add(1)
	return best
}

// outsideLoop reads one fixed port in batches and forwards each packet to
// its stream's inside port.
func (p *Proxy) outsideLoop(c *udpio.Conn, rtcp bool) {
	defer p.wg.Done()
	msgs := udpio.NewMessages(udpio.DefaultBatch, 0)
	var raw *rawSender
	if !rtcp && p.raw != nil {
		raw = p.raw
		defer raw.close()
	}
	sent := func(s *stream, n int) { p.sentToServer(s, false, n, p.now.Load()) }
	for {
		n, err := c.ReadBatch(msgs)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		now := p.now.Load()
		for i := range msgs[:n] {
			m := &msgs[i]
			s, dst, ok := p.demuxOutside(m, rtcp)
			if !ok {
				continue
			}
			if raw != nil && raw.add(s, m.Payload(), netip.AddrPortFrom(p.cfg.InsideIP, s.insidePort), dst) {
				continue
			}
			p.sendToServer(s, rtcp, m.Payload(), dst, now)
		}
		if raw != nil {
			if failed := raw.flush(sent); failed > 0 {
				p.c.DropWriteError.Add(uint64(failed))
			}
		}
	}
}

// fromOutside forwards one packet from a fixed port with sendto (the
// batched loop uses the raw sender for RTP where it can).
func (p *Proxy) fromOutside(m *udpio.Message, rtcp bool, now int64) {
	if s, dst, ok := p.demuxOutside(m, rtcp); ok {
		p.sendToServer(s, rtcp, m.Payload(), dst, now)
	}
}

// demuxOutside finds the stream of a packet from a fixed port (SSRC, then
// source address, latching when the rules allow) and where it goes inside.
func (p *Proxy) demuxOutside(m *udpio.Message, rtcp bool) (*stream, netip.AddrPort, bool) {
	b := m.Payload()
	var ssrc uint32
	var err error
	if rtcp {
		ssrc, err = RTCPSenderSSRC(b)
	} else {
		ssrc, err = RTPSSRC(b)
	}
	if err != nil {
		p.c.DropMalformed.Add(1)
		return nil, netip.AddrPort{}, false
	}
	p.mu.RLock()
	s := p.lookupLocked(ssrc, m.Addr, rtcp)
	p.mu.RUnlock()
	if s == nil {
		if s = p.latch(ssrc, m.Addr, rtcp); s == nil {
			p.c.DropUnknownSSRC.Add(1)
			return nil, netip.AddrPort{}, false
		}
	}
	r := s.route.Load()
	dst := r.server
	if rtcp {
		dst = r.serverRTCP
	}
	if !dst.IsValid() {
		p.c.DropNoPeer.Add(1)
		return nil, netip.AddrPort{}, false
	}
	return s, dst, true
}

func (p *Proxy) sendToServer(s *stream, rtcp bool, b []byte, dst netip.AddrPort, now int64) {
	conn := s.rtpConn
	if rtcp {
		conn = s.rtcpConn
	}
	if _, err := conn.WriteToUDPAddrPort(b, dst); err != nil {
		p.c.DropWriteError.Add(1)
		return
	}
	p.sentToServer(s, rtcp, len(b), now)
}

// sentToServer accounts a packet sent from an inside port.
func (p *Proxy) sentToServer(s *stream, rtcp bool, n int, now int64) {
	s.last.Store(now)
	p.c.BytesIn.Add(uint64(n))
	if rtcp {
		p.c.RTCPIn.Add(1)
		return
	}
	p.c.RTPIn.Add(1)
	if s.toServer.Add(1) >= p.cfg.OffloadAfter {
		p.maybeOffload(s)
	}
}

// fromInside checks a packet from the server on one of s's inside ports and
// returns where it goes outside.
func (p *Proxy) fromInside(s *stream, rtcp bool, src netip.AddrPort) (netip.AddrPort, bool) {
	r := s.route.Load()
	if r.server.IsValid() && src.Addr() != r.server.Addr() {
		p.c.DropNotServer.Add(1)
		return netip.AddrPort{}, false
	}
	if !rtcp && !r.serverSrc.IsValid() {
		p.mu.Lock()
		r2 := *s.route.Load()
		r2.serverSrc = src
		s.route.Store(&r2)
		p.mu.Unlock()
		r = &r2
	}
	// Only to where the client's own media came from (see policy.go).
	dst := r.clientSrc
	if rtcp {
		dst = r.clientRTCPSrc
		if !dst.IsValid() {
			dst = r.clientRTCPDst
		}
	}
	if !dst.IsValid() && p.cfg.SendBeforeLatch {
		dst = r.client
		if rtcp {
			dst = r.clientRTCP
		}
	}
	if !dst.IsValid() {
		if r.client.IsValid() {
			p.c.DropNotLatched.Add(1)
		} else {
			p.c.DropNoPeer.Add(1)
		}
		return netip.AddrPort{}, false
	}
	return dst, true
}

// sentToClient accounts a packet sent out of the fixed port.
func (p *Proxy) sentToClient(s *stream, rtcp bool, n int) {
	s.last.Store(p.now.Load())
	p.c.BytesOut.Add(uint64(n))
	if rtcp {
		p.c.RTCPOut.Add(1)
		return
	}
	p.c.RTPOut.Add(1)
	if s.toClient.Add(1) >= p.cfg.OffloadAfter {
		p.maybeOffload(s)
	}
}

func (p *Proxy) maybeOffload(s *stream) {
	if p.cfg.Offloader == nil || s.offload.Load() != offloadNone ||
		s.toServer.Load() < p.cfg.OffloadAfter || s.toClient.Load() < p.cfg.OffloadAfter {
		return
	}
	r := s.route.Load()
	if !r.clientSrc.IsValid() || !r.serverSrc.IsValid() || !r.server.IsValid() {
		return
	}
	if !s.offload.CompareAndSwap(offloadNone, offloadQueued) {
		return
	}
	select {
	case p.offloadq <- s:
	default:
		s.offload.Store(offloadNone)
	}
}

func (p *Proxy) offloadWorker() {
	defer p.wg.Done()
	for {
		select {
		case <-p.done:
			return
		case s := <-p.offloadq:
			if s.gone.Load() {
				continue
			}
			r := s.route.Load()
			f := Flow{
				Client: r.clientSrc, Fixed: p.fixedFor(p.rtp),
				Inside: netip.AddrPortFrom(p.cfg.InsideIP, s.insidePort),
				Server: r.server, ServerSrc: r.serverSrc,
			}
			if err := p.cfg.Offloader.Offload(f); err != nil {
				s.offload.Store(offloadFailed)
				p.c.OffloadErrors.Add(1)
				p.log.Warn("kernel offload failed; the flow stays in user space", "call", s.callID, "err", err)
				continue
			}
			s.flow = f
			s.offload.Store(offloadDone)
			p.c.Offloads.Add(1)
			if s.gone.Load() {
				_ = p.cfg.Offloader.Remove(f)
			}
		}
	}
}

func (p *Proxy) fixedFor(c *udpio.Conn) netip.AddrPort {
	a := c.LocalAddr()
	if a.Addr().IsUnspecified() && p.cfg.RTP.Addr().IsValid() {
		return netip.AddrPortFrom(p.cfg.RTP.Addr(), a.Port())
	}
	return a
}

// janitor advances the coarse clock, reads kernel counters and ends calls
// whose media stopped.
func (p *Proxy) janitor() {
	defer p.wg.Done()
	t := time.NewTicker(p.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case now := <-t.C:
			p.now.Store(now.UnixNano())
			p.sweep(now.UnixNano())
		}
	}
}

func (p *Proxy) sweep(now int64) {
	p.mu.RLock()
	var offloaded []*stream
	type callState struct {
		last   int64
		active bool
	}
	calls := make(map[string]callState, len(p.calls))
	for id, c := range p.calls {
		var cs callState
		for _, s := range c {
			if s.offload.Load() == offloadDone {
				offloaded = append(offloaded, s)
			}
			if l := s.last.Load(); l > cs.last {
				cs.last = l
			}
			if s.last.Load() != s.created {
				cs.active = true
			}
		}
		calls[id] = cs
	}
	p.mu.RUnlock()
	var kernel uint64
	for _, s := range offloaded {
		pk, _, err := p.cfg.Offloader.Stats(s.flow)
		if err != nil {
			continue
		}
		kernel += pk
		if pk != s.kernelPkts.Swap(pk) {
			s.last.Store(now)
			if cs, ok := calls[s.callID]; ok {
				cs.last, cs.active = now, true
				calls[s.callID] = cs
			}
		}
	}
	p.c.KernelPackets.Store(kernel)
	for id, cs := range calls {
		limit := p.cfg.MediaTimeout
		if !cs.active {
			limit = p.cfg.SetupTimeout
		}
		if time.Duration(now-cs.last) < limit {
			continue
		}
		if p.DeleteCall(id) == nil {
			p.c.Timeouts.Add(1)
			p.log.Info("call ended: no media", "call", id, "after", limit)
			if p.cfg.OnTimeout != nil {
				p.cfg.OnTimeout(id)
			}
		}
	}
}
