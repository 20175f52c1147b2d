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
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/addrpolicy"
	"github.com/traverse-rtc/traverse/internal/config"
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
	// SetOnTimeout replaces it.
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
	config.Default(&c.MediaTimeout, 30*time.Second)
	config.Default(&c.SetupTimeout, 90*time.Second)
	config.Default(&c.Tick, time.Second)
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
	rtp  *udpio.Conn // the fixed RTP port (rtpLeg.fixed)
	rtcp *udpio.Conn // the fixed RTCP port (rtcpLeg.fixed)
	pool *portPool

	rtpLeg, rtcpLeg leg // see forward.go

	mu       sync.RWMutex // guards calls, bySSRC, awaiting, closed, and stream fields marked "p.mu"
	calls    map[string]map[uint8]*stream
	bySSRC   map[uint32][]*stream
	bySrc    map[netip.AddrPort]*stream // latched RTP sources, for SSRC changes
	awaiting map[netip.Addr][]*stream
	closed   bool

	own       atomic.Pointer[ownState]            // the destination policy (policy.go)
	now       atomic.Int64                        // coarse clock, unix nanoseconds, advanced by the janitor
	onTimeout atomic.Pointer[func(callID string)] // Config.OnTimeout, or SetOnTimeout's
	c         Counters
	offloadq  chan *stream
	done      chan struct{}
	wg        sync.WaitGroup
	once      sync.Once
	poller    *poller    // the inside sockets' reader (nil: one goroutine per socket)
	raw       *rawSender // batched inside-bound RTP sender (nil: sendto per packet)
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
	p.rtpLeg, p.rtcpLeg = newLegs(p)
	p.onTimeout.Store(&cfg.OnTimeout)
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
	go p.outsideLoop(&p.rtpLeg)
	go p.outsideLoop(&p.rtcpLeg)
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

// Run waits for ctx to end, then closes the proxy. The proxy forwards
// from New on (its signaling owner applies descriptors before Run); Run is
// the role's lifecycle, like every role's.
func (p *Proxy) Run(ctx context.Context) error {
	<-ctx.Done()
	return p.Close()
}

// SetOnTimeout replaces Config.OnTimeout: the signaling gateway, made
// after its proxy, registers itself this way (sipgw.New).
func (p *Proxy) SetOnTimeout(f func(callID string)) { p.onTimeout.Store(&f) }

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
