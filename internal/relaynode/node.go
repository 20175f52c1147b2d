package relaynode

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v3"

	"github.com/traverse-rtc/traverse/client/nat"
	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/persource"
	"github.com/traverse-rtc/traverse/internal/relayproto"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

// maxOpenAge bounds how long the node punches toward a granted session's
// peers that have not both bound.
const maxOpenAge = 10 * time.Second

// Node is one relay node.
type Node struct {
	cfg   Config
	m     *metrics
	conn  *udpio.Conn
	bus   *bus.Client
	start time.Time
	stunS netip.AddrPort // the STUN server keepalives go to
	nat   nat.Report

	public atomic.Pointer[netip.AddrPort] // the relay port's public address
	ready  atomic.Bool
	bytes  atomic.Int64 // relayed bytes, read by the announcer
	stunTx atomic.Pointer[[stun.TransactionIDSize]byte]

	mu       sync.Mutex // guards sessions, byAddr, opens, bucket
	sessions map[relayproto.Session]*session
	byAddr   map[netip.AddrPort]binding
	opens    map[relayproto.Session]open
	bucket   bucket
	bindRate *persource.Rate

	closeOnce sync.Once
	wg        sync.WaitGroup
}

type end struct {
	addr  netip.AddrPort
	bound bool
	seen  int64 // ns since start
	sig   [64]byte
}

type session struct {
	id      relayproto.Session
	end     [2]end
	created int64 // ns since start
}

type binding struct {
	s    *session
	side uint8
}

type open struct {
	peers   []netip.AddrPort
	expires int64
}

// bucket is a token bucket of bytes; rate 0 means no cap.
type bucket struct {
	rate   float64 // bytes per ns
	depth  float64
	tokens float64
	last   int64
}

func (b *bucket) take(n int, now int64) bool {
	if b.rate == 0 {
		return true
	}
	b.tokens = min(b.depth, b.tokens+float64(now-b.last)*b.rate)
	b.last = now
	if b.tokens < float64(n) {
		return false
	}
	b.tokens -= float64(n)
	return true
}

// New binds the relay port, learns the node's public address and NAT
// behaviour and connects to the bus.
func New(cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	network := "udp4"
	if cfg.Listen.Addr().Is6() {
		network = "udp6"
	}
	conn, err := udpio.Listen(context.Background(), network, cfg.Listen.String(), udpio.Options{Batch: cfg.Batch, ReadBuffer: 4 << 20})
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, m: m, conn: conn, start: time.Now(), sessions: map[relayproto.Session]*session{},
		byAddr: map[netip.AddrPort]binding{}, opens: map[relayproto.Session]open{},
		bindRate: persource.NewRate(float64(cfg.BindRate), 2*cfg.BindRate)}
	if cfg.MaxBitrate > 0 {
		rate := float64(cfg.MaxBitrate) / 8 / 1e9
		n.bucket = bucket{rate: rate, depth: float64(cfg.Burst), tokens: float64(cfg.Burst)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.DiscoverTimeout)
	defer cancel()
	if err := n.discover(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	n.bus = cfg.BusClient
	if n.bus == nil && len(cfg.Bus.URLs) > 0 {
		if cfg.Bus.Name == "" {
			cfg.Bus.Name = "relay " + cfg.ID
		}
		n.bus, err = bus.Connect(cfg.Bus, cfg.Log)
		if err != nil {
			conn.Close()
			return nil, err
		}
	}
	return n, nil
}

// discover runs client/nat against the first STUN server that answers and
// asks it for the relay port's own public address.
func (n *Node) discover(ctx context.Context) error {
	pub := n.conn.LocalAddr()
	if n.cfg.Public.IsValid() {
		pub = n.cfg.Public
	}
	if len(n.cfg.STUN) == 0 {
		n.nat = nat.Report{Mapping: nat.EndpointIndependent, Filtering: nat.EndpointIndependent, PublicAddr: pub}
		n.public.Store(&pub)
		return nil
	}
	var errs []error
	for _, s := range n.cfg.STUN {
		local := ""
		if a := n.cfg.Listen.Addr(); !a.IsUnspecified() {
			local = a.String()
		}
		rep, err := nat.Discover(ctx, nat.Config{Server: s, Local: local, RTO: n.cfg.DiscoverRTO, Attempts: 4})
		if err != nil && !errors.Is(err, nat.ErrUDPBlocked) {
			errs = append(errs, fmt.Errorf("%s: %w", s, err))
			continue
		}
		n.nat, n.stunS = rep, rep.Server
		if rep.UDPBlocked {
			n.public.Store(&pub)
			n.cfg.Log.Warn("relay: UDP is blocked: no peer can reach this node", "stun", s)
			return nil
		}
		mapped, err := n.bindingNow(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: relay port binding: %w", s, err))
			continue
		}
		if n.cfg.Public.IsValid() {
			mapped = n.cfg.Public
		}
		n.public.Store(&mapped)
		n.cfg.Log.Info("relay: discovered", "public", mapped, "nat", rep.NAT, "mapping", rep.Mapping, "filtering", rep.Filtering)
		return nil
	}
	return fmt.Errorf("%w: %w", ErrDiscovery, errors.Join(errs...))
}

// bindingNow asks the STUN server for the relay port's mapping before the
// data loop runs (it reads the socket itself).
func (n *Node) bindingNow(ctx context.Context) (netip.AddrPort, error) {
	uc := n.conn.UDPConn()
	defer uc.SetReadDeadline(time.Time{})
	buf := make([]byte, 1500)
	rto := 100 * time.Millisecond
	for i := 0; i < 5 && ctx.Err() == nil; i++ {
		req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
		if _, err := uc.WriteToUDPAddrPort(req.Raw, n.stunS); err != nil {
			return netip.AddrPort{}, err
		}
		_ = uc.SetReadDeadline(time.Now().Add(rto))
		for {
			k, _, err := uc.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			if a, ok := mappedOf(buf[:k], req.TransactionID); ok {
				return a, nil
			}
		}
		rto *= 2
	}
	return netip.AddrPort{}, ErrDiscovery
}

func mappedOf(b []byte, id [stun.TransactionIDSize]byte) (netip.AddrPort, bool) {
	m := &stun.Message{Raw: b}
	if m.Decode() != nil || m.TransactionID != id || m.Type != stun.BindingSuccess {
		return netip.AddrPort{}, false
	}
	var xa stun.XORMappedAddress
	if xa.GetFrom(m) != nil {
		return netip.AddrPort{}, false
	}
	a, ok := netip.AddrFromSlice(xa.IP)
	if !ok {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(xa.Port)), true
}

// Addr is the relay port's local address.
func (n *Node) Addr() netip.AddrPort { return n.conn.LocalAddr() }

// Public is the relay port's public address as the node knows it.
func (n *Node) Public() netip.AddrPort { return *n.public.Load() }

// NAT is what discovery found.
func (n *Node) NAT() nat.Report { return n.nat }

// Ready reports whether the node relays (admin /readyz).
func (n *Node) Ready() error {
	if !n.ready.Load() {
		return errors.New("relay: not running")
	}
	return nil
}

// Run relays until ctx ends or Close.
func (n *Node) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { n.conn.Close() })
	defer stop()
	if n.bus != nil {
		sub, err := n.bus.SubscribeRelayOpen(n.cfg.ID, n.onOpen)
		if err != nil {
			return err
		}
		defer sub.Unsubscribe()
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.tick(ctx)
	}()
	n.ready.Store(true)
	defer n.ready.Store(false)
	err := n.loop()
	cancel()
	n.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Close stops the node; it is idempotent.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.conn.Close()
		if n.bus != nil && n.cfg.BusClient == nil {
			n.bus.Close()
		}
	})
	return nil
}

func (n *Node) now() int64 { return int64(time.Since(n.start)) }

// loop is the data path: read a batch, handle every datagram under one
// lock, write the batch of forwards.
func (n *Node) loop() error {
	in := udpio.NewMessages(max(n.cfg.Batch, udpio.DefaultBatch), 0)
	out := udpio.NewMessages(len(in), 0)
	for {
		k, err := n.conn.ReadBatch(in)
		if err != nil {
			return err
		}
		now, wall := n.now(), time.Now()
		o := 0
		n.mu.Lock()
		for i := range in[:k] {
			if n.handle(&in[i], &out[o], now, wall) {
				o++
			}
		}
		n.mu.Unlock()
		if o > 0 {
			if sent, err := n.conn.WriteBatch(out[:o]); err != nil {
				n.m.dropped[dropSendFail].Add(float64(o - sent))
				if errors.Is(err, net.ErrClosed) {
					return err
				}
			}
		}
	}
}

// handle handles one datagram and reports whether it filled out.
func (n *Node) handle(msg, out *udpio.Message, now int64, wall time.Time) bool {
	p, src := msg.Payload(), msg.Addr
	if len(p) == 0 {
		n.m.dropped[dropMalformed].Inc()
		return false
	}
	switch p[0] {
	case relayproto.TypeData:
		b, ok := n.byAddr[src]
		if !ok {
			n.m.dropped[dropUnbound].Inc()
			return false
		}
		b.s.end[b.side].seen = now
		other := &b.s.end[1-b.side]
		if !other.bound {
			n.m.dropped[dropNotReady].Inc()
			return false
		}
		if !n.bucket.take(len(p), now) {
			n.m.dropped[dropBandwidth].Inc()
			return false
		}
		out.N = copy(out.Buf[:cap(out.Buf)], p)
		out.Addr = other.addr
		n.m.relayed.Inc()
		n.m.bytes.Add(float64(len(p)))
		n.bytes.Add(int64(len(p)))
		return true
	case relayproto.TypeBind:
		return n.bind(p[1:], src, out, now, wall)
	}
	if p[0] < 4 { // STUN (RFC 7983): the answer to a keepalive
		if id := n.stunTx.Load(); id != nil {
			if a, ok := mappedOf(p, *id); ok && a != n.Public() && !n.cfg.Public.IsValid() {
				n.cfg.Log.Warn("relay: public address changed", "old", n.Public(), "new", a)
				n.public.Store(&a)
			}
		}
		return false
	}
	n.m.dropped[dropMalformed].Inc()
	return false
}

func (n *Node) bind(grant []byte, src netip.AddrPort, out *udpio.Message, now int64, wall time.Time) bool {
	if !n.bindRate.AllowAt(src.Addr(), n.bindRate.Now()) {
		n.m.dropped[dropBindRate].Inc()
		return false
	}
	// A keepalive bind repeats the grant that bound this address: no
	// second signature check.
	if b, ok := n.byAddr[src]; ok && len(grant) > 64 {
		e := &b.s.end[b.side]
		if subtle.ConstantTimeCompare(e.sig[:], grant[len(grant)-64:]) == 1 {
			e.seen = now
			return n.bound(out, src, b.s, b.side, 0)
		}
	}
	g, err := relayproto.Verify(grant, n.cfg.GrantKey, n.cfg.ID, wall)
	if err != nil {
		switch {
		case errors.Is(err, relayproto.ErrSignature):
			n.m.dropped[dropSignature].Inc()
		case errors.Is(err, relayproto.ErrExpired):
			n.m.dropped[dropExpired].Inc()
		case errors.Is(err, relayproto.ErrOtherNode):
			n.m.dropped[dropOtherNode].Inc()
		default:
			n.m.dropped[dropBadGrant].Inc()
		}
		return false
	}
	s := n.sessions[g.Session]
	if s == nil {
		if n.cfg.MaxSessions > 0 && len(n.sessions) >= n.cfg.MaxSessions {
			n.m.dropped[dropFull].Inc()
			return n.bound(out, src, &session{id: g.Session}, g.Side, relayproto.FlagFull)
		}
		s = &session{id: g.Session, created: now}
		n.sessions[g.Session] = s
		n.m.sessions.Set(float64(len(n.sessions)))
	}
	e := &s.end[g.Side]
	if e.bound && e.addr != src {
		if now-e.seen < int64(n.cfg.RebindAfter) {
			n.m.dropped[dropHijack].Inc()
			return false
		}
		delete(n.byAddr, e.addr)
	}
	if old, ok := n.byAddr[src]; ok && (old.s != s || old.side != g.Side) {
		// This address held another side: it moves.
		old.s.end[old.side].bound = false
		delete(n.byAddr, src)
	}
	wasReady := s.end[1-g.Side].bound && e.bound
	e.addr, e.bound, e.seen = src, true, now
	copy(e.sig[:], grant[len(grant)-64:])
	n.byAddr[src] = binding{s: s, side: g.Side}
	n.m.binds.Inc()
	other := &s.end[1-g.Side]
	if other.bound && !wasReady {
		// Tell the other side at once that data may flow.
		msg := relayproto.AppendBound(nil, s.id, 1-g.Side, relayproto.FlagReady)
		if err := n.conn.WriteTo(msg, other.addr); err != nil {
			n.m.dropped[dropSendFail].Inc()
		}
	}
	return n.bound(out, src, s, g.Side, 0)
}

func (n *Node) bound(out *udpio.Message, to netip.AddrPort, s *session, side, flags uint8) bool {
	if s.end[1-side].bound && s.end[side].bound {
		flags |= relayproto.FlagReady
	}
	out.N = len(relayproto.AppendBound(out.Buf[:0], s.id, side, flags))
	out.Addr = to
	return true
}

// onOpen records a granted session's peers and punches toward them.
func (n *Node) onOpen(o bus.RelayOpen) {
	var id relayproto.Session
	if b, err := hex.DecodeString(o.Session); err == nil && len(b) == len(id) {
		copy(id[:], b)
	} else {
		return
	}
	var peers []netip.AddrPort
	for _, p := range o.Peers {
		if a, err := netip.ParseAddrPort(p); err == nil {
			peers = append(peers, netip.AddrPortFrom(a.Addr().Unmap(), a.Port()))
		}
	}
	n.mu.Lock()
	if len(n.opens) < max(n.cfg.MaxSessions, 1024) {
		n.opens[id] = open{peers: peers, expires: n.now() + int64(maxOpenAge)}
	}
	n.mu.Unlock()
	n.punch(id, peers)
}

func (n *Node) punch(id relayproto.Session, peers []netip.AddrPort) {
	msg := relayproto.AppendPunch(nil, id)
	for _, p := range peers {
		if n.conn.WriteTo(msg, p) == nil {
			n.m.punches.Inc()
		}
	}
}

// tick runs every 250 ms: punches, session expiry, announcements,
// keepalives.
func (n *Node) tick(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var lastAnnounce, lastKeep time.Time
	var lastBytes int64
	bitrate := int64(0)
	n.announce(0)
	for {
		select {
		case <-ctx.Done():
			return
		case wall := <-t.C:
			now := n.now()
			type p struct {
				id    relayproto.Session
				peers []netip.AddrPort
			}
			var punches []p
			n.mu.Lock()
			for id, o := range n.opens {
				s := n.sessions[id]
				if now > o.expires || (s != nil && s.end[0].bound && s.end[1].bound) {
					delete(n.opens, id)
					continue
				}
				punches = append(punches, p{id, o.peers})
			}
			for id, s := range n.sessions {
				idle := now-s.end[0].seen > int64(n.cfg.SessionIdle) && now-s.end[1].seen > int64(n.cfg.SessionIdle)
				// A session whose second side never came holds a slot
				// (a volunteer has 8) only as long as a bind may take.
				half := !(s.end[0].bound && s.end[1].bound) && now-s.created > int64(n.cfg.HalfSessionTTL)
				if idle || half {
					for _, e := range s.end {
						if e.bound {
							delete(n.byAddr, e.addr)
						}
					}
					delete(n.sessions, id)
					n.m.expired.Inc()
				}
			}
			n.m.sessions.Set(float64(len(n.sessions)))
			n.mu.Unlock()
			for _, x := range punches {
				n.punch(x.id, x.peers)
			}
			if wall.Sub(lastAnnounce) >= bus.RelayAnnounceInterval {
				b := n.bytes.Load()
				if !lastAnnounce.IsZero() {
					bitrate = int64(float64(b-lastBytes) * 8 / wall.Sub(lastAnnounce).Seconds())
				}
				lastBytes, lastAnnounce = b, wall
				n.announce(bitrate)
			}
			if n.cfg.Keepalive > 0 && n.stunS.IsValid() && wall.Sub(lastKeep) >= n.cfg.Keepalive {
				lastKeep = wall
				req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
				id := req.TransactionID
				n.stunTx.Store(&id)
				if n.conn.WriteTo(req.Raw, n.stunS) == nil {
					n.m.keepalive.Inc()
				}
			}
		}
	}
}

// Announcement returns the node's report as announced now.
func (n *Node) Announcement(bitrate int64) bus.RelayAnnounce {
	n.mu.Lock()
	sessions := len(n.sessions)
	n.mu.Unlock()
	return bus.RelayAnnounce{Node: n.cfg.ID, Region: n.cfg.Region, Addr: n.Public().String(), NAT: n.nat.NAT,
		UDPBlocked: n.nat.UDPBlocked, Mapping: n.nat.Mapping.String(), Filtering: n.nat.Filtering.String(),
		Volunteer: n.cfg.Volunteer, Sessions: sessions, MaxSessions: max(n.cfg.MaxSessions, 0),
		Bitrate: bitrate, MaxBitrate: max(n.cfg.MaxBitrate, 0), Time: time.Now()}
}

func (n *Node) announce(bitrate int64) {
	if n.bus == nil {
		return
	}
	if err := n.bus.AnnounceRelay(n.Announcement(bitrate)); err != nil {
		n.cfg.Log.Warn("relay: announce", "err", err)
	}
}
