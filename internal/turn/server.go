package turn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3"

	"github.com/traverse-rtc/traverse/internal/addrpolicy"
	"github.com/traverse-rtc/traverse/internal/logging"
	"github.com/traverse-rtc/traverse/internal/persource"
	"github.com/traverse-rtc/traverse/internal/tlsutil"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

// Server is a TURN server. New binds its sockets, Run serves them until its
// context ends, Close (idempotent) stops it and releases everything.
type Server struct {
	cfg Config
	m   *metrics
	// filter refuses the server's own addresses, relay IP included;
	// relayFilter exempts the relay IP, for relayed addresses only
	// (peerAllowed).
	filter, relayFilter addrpolicy.Filter
	nonces              *nonces
	engs                []*engine     // one per UDP shard
	next                atomic.Uint32 // round robin of stream allocations over engines

	tcpLn  net.Listener
	tlsLn  net.Listener
	dtlsLn net.Listener

	sweepEvery time.Duration
	off        offState

	mu sync.RWMutex // guards the maps below, closed and running
	// allocs, byFD and byRelay index the same allocations.
	allocs  map[fiveTuple]*allocation
	byFD    map[int32]*relaySock
	byRelay map[netip.AddrPort]*relaySock
	perUser map[string]int
	streams map[*streamConn]struct{}
	closed  bool
	running bool // Run has started the loops
	// RFC 6062: peer data connections by CONNECTION-ID, and the relay
	// ports TCP allocations listen on.
	tcpConns  map[uint32]*peerConn
	tcpRelays map[netip.AddrPort]bool

	res reservations // ports held for RESERVATION-TOKEN (RFC 8656 section 7.2)

	usersMu sync.RWMutex // guards users
	users   map[string]string

	fails     *authFailures
	answers   *persource.Rate  // answers to unauthenticated requests, per source
	allocRate *persource.Rate  // new allocations, per source
	perSource persource.Counts // stream connections per source; guarded by mu

	done      chan struct{}
	wg        sync.WaitGroup
	pipes     sync.WaitGroup // RFC 6062 dials, pipes and accept loops
	closeOnce sync.Once

	// RFC 6062 timers (tcpConnectTimeout, tcpBindTimeout; tests shorten
	// them).
	connectTimeout, bindTimeout time.Duration
}

// New validates cfg, reads the users file and binds the listeners. It
// serves once Run is called; Close releases what New took if Run never is.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	users, err := LoadUsers(cfg.Users, cfg.UsersFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if len(users) == 0 && cfg.AuthSecret == "" {
		return nil, fmt.Errorf("%w: no users and no auth secret: nobody could allocate", ErrConfig)
	}
	// What outside parties send is logged (failed authentications,
	// refused peers, malformed messages): through a flood-proof logger.
	cfg.Log = logging.Bounded(cfg.Log, cfg.Registerer)
	s := &Server{
		cfg:            cfg,
		m:              newMetrics(cfg.Registerer),
		nonces:         newNonces(cfg.NonceLifetime),
		sweepEvery:     cfg.PollEvery,
		allocs:         map[fiveTuple]*allocation{},
		byFD:           map[int32]*relaySock{},
		byRelay:        map[netip.AddrPort]*relaySock{},
		perUser:        map[string]int{},
		streams:        map[*streamConn]struct{}{},
		tcpConns:       map[uint32]*peerConn{},
		tcpRelays:      map[netip.AddrPort]bool{},
		connectTimeout: tcpConnectTimeout,
		bindTimeout:    tcpBindTimeout,
		fails:          newAuthFailures(cfg.AuthFailuresPerMinute, cfg.AuthFailuresPerSource),
		off:            offState{allocs: map[*allocation]*offAlloc{}, last: time.Now()},
		users:          users,
		done:           make(chan struct{}),
	}
	s.answers = persource.NewRate(float64(cfg.UnauthAnswerRate), 5*cfg.UnauthAnswerRate)
	s.allocRate = persource.NewRate(float64(cfg.AllocationRate), 5*cfg.AllocationRate)
	// With port 0 the UDP socket picks the port and TCP must get the same
	// one, which another process may hold: try a few ports.
	for try := 0; try < 20; try++ {
		if err = s.listen(); err == nil || cfg.Listen.Port() != 0 {
			break
		}
		s.closeSockets()
		for _, e := range s.engs {
			e.close()
		}
		s.engs, s.tcpLn, s.tlsLn, s.dtlsLn = nil, nil, nil, nil
	}
	if err != nil {
		s.closeSockets()
		for _, e := range s.engs {
			e.close()
		}
		return nil, err
	}
	s.initFilter()
	if cfg.AllowLoopbackPeers {
		cfg.Log.Warn("turn: relaying to loopback peers is allowed (--allow-loopback-peers): for local tests only")
	}
	if la := s.Addr().Addr().Unmap(); cfg.Offloader != nil && (!la.Is4() || la.IsUnspecified() || !cfg.RelayIP.Is4()) {
		cfg.Log.Warn("turn: the kernel fast path needs a specific IPv4 listen and relay address: every channel stays in user space",
			"listen", s.Addr().String(), "relay", cfg.RelayIP.String())
	}
	cfg.Log.Info("turn listening", "udp", s.Addr().String(), "tcp", addrString(s.tcpLn), "tls", addrString(s.tlsLn), "dtls", addrString(s.dtlsLn),
		"relay", cfg.RelayIP.String(), "ports", fmt.Sprintf("%d-%d", cfg.RelayPortLow, cfg.RelayPortHigh))
	return s, nil
}

func addrString(l net.Listener) string {
	if l == nil {
		return ""
	}
	return l.Addr().String()
}

func (s *Server) listen() error {
	listen := s.cfg.Listen
	for i := 0; i < s.cfg.Shards; i++ {
		e, err := newEngine(s, i, listen, s.cfg.Shards > 1)
		if err != nil {
			return err
		}
		s.engs = append(s.engs, e)
		listen = e.laddr
	}
	var err error
	port := s.engs[0].laddr.Port()
	if !s.cfg.NoTCP {
		s.tcpLn, err = net.Listen("tcp", netip.AddrPortFrom(s.cfg.Listen.Addr(), port).String())
		if err != nil {
			return fmt.Errorf("turn: tcp listener: %w", err)
		}
	}
	if s.cfg.TLSListen.IsValid() {
		tc := s.cfg.TLS
		if tc == nil {
			tc, err = tlsutil.ServerConfig("", "", "traverse turn", s.cfg.TLSListen.Addr().String())
			if err != nil {
				return err
			}
		}
		ln, err := net.Listen("tcp", s.cfg.TLSListen.String())
		if err != nil {
			return fmt.Errorf("turn: tls listener: %w", err)
		}
		s.tlsLn = tls.NewListener(ln, tc)
		if !s.cfg.NoDTLS {
			// DTLS over UDP on the TLS port, as coturn does.
			ua := net.UDPAddrFromAddrPort(lnAddr(s.tlsLn))
			s.dtlsLn, err = dtls.Listen("udp", ua, &dtls.Config{Certificates: tc.Certificates,
				ExtendedMasterSecret: dtls.RequestExtendedMasterSecret})
			if err != nil {
				return fmt.Errorf("turn: dtls listener: %w", err)
			}
		}
	}
	return nil
}

func (s *Server) initFilter() {
	// The server's own addresses are refused as peers at every port: a
	// client must not reach services on the relay host (its own address
	// and everything bound to 0.0.0.0). Own means the listen and relay
	// IPs and every interface address at start. The one exception is
	// relay to relay (RFC 8656 allows it; two relay-only WebRTC peers of
	// one server need it): the relay IP at a port that is a live
	// allocation's relayed address (peerAllowed). Listeners are refused
	// by exact address (OwnEndpoints), also where loopback is allowed.
	f := addrpolicy.Filter{Allow: s.cfg.AllowPeers, Deny: s.cfg.DenyPeers, Loopback: s.cfg.AllowLoopbackPeers}
	la := s.cfg.Listen.Addr().Unmap()
	own := map[netip.Addr]bool{}
	for _, a := range append(addrpolicy.HostAddrs(netip.IPv6Unspecified()), la, s.cfg.RelayIP) {
		if a = a.Unmap(); !own[a] && !a.IsUnspecified() {
			own[a] = true
			f.Own = append(f.Own, a)
		}
	}
	for _, e := range s.cfg.OwnEndpoints {
		f.OwnEndpoints = append(f.OwnEndpoints, netip.AddrPortFrom(e.Addr().Unmap(), e.Port()))
	}
	f.OwnEndpoints = append(f.OwnEndpoints, netip.AddrPortFrom(la, s.engs[0].laddr.Port()))
	if s.tlsLn != nil {
		ap := s.tlsLn.Addr().(*net.TCPAddr).AddrPort()
		f.OwnEndpoints = append(f.OwnEndpoints, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	s.filter = f
	// relayFilter is the same filter with the relay IP not counted as
	// own: it judges the relay-to-relay exception (the operator's deny
	// list, the loopback opt-in and the listeners still apply).
	f.RelayIP = s.cfg.RelayIP
	s.relayFilter = f
}

// peerAllowed reports whether an allocation may send to peer. With
// endpoint unset only the address is judged (CreatePermission: the relay
// IP may be permitted, for relay to relay; what is sent to it is judged
// per port). tcp says which relayed addresses count: RFC 6062 listeners
// for Connect, UDP relay sockets otherwise.
func (s *Server) peerAllowed(peer netip.AddrPort, endpoint, tcp bool) bool {
	ip := peer.Addr().Unmap()
	if ip != s.cfg.RelayIP {
		if endpoint {
			return s.filter.AllowedEndpoint(peer)
		}
		return s.filter.AllowedIP(ip)
	}
	if !endpoint {
		return s.relayFilter.AllowedIP(ip)
	}
	if s.filter.AllowedEndpoint(peer) {
		return true // the relay IP is allowed anyway (loopback opt-in)
	}
	peer = netip.AddrPortFrom(ip, peer.Port())
	s.mu.RLock()
	live := s.tcpRelays[peer]
	if !tcp {
		_, live = s.byRelay[peer]
	}
	s.mu.RUnlock()
	return live && s.relayFilter.AllowedEndpoint(peer)
}

// Run serves until ctx is done or Close is called, reloading the users file
// on every value of Config.ReloadUsers, then closes the server. A second
// Run, or one after Close, returns ErrClosed.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	closed := s.closed || s.running
	if !closed {
		s.running = true
		s.start()
	}
	s.mu.Unlock()
	if closed {
		return ErrClosed
	}
	defer s.Close()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.done:
			return nil
		case <-s.cfg.ReloadUsers:
			n, err := s.ReloadUsers()
			if err != nil {
				s.cfg.Log.Error("turn: users file not reloaded", "err", err)
				continue
			}
			s.cfg.Log.Info("turn: users reloaded", "users", n)
		}
	}
}

// start starts the event loops, accept loops and the sweeper; s.mu is
// held, so that Close (which sets closed under it) waits for none that
// start after it.
func (s *Server) start() {
	for _, e := range s.engs {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); e.run() }()
	}
	if s.tcpLn != nil {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.acceptLoop(s.tcpLn, protoTCP) }()
	}
	if s.tlsLn != nil {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.acceptLoop(s.tlsLn, protoTLS) }()
	}
	if s.dtlsLn != nil {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.acceptLoop(s.dtlsLn, protoDTLS) }()
	}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.sweepLoop() }()
}

// Addr returns the UDP listener's address (TCP listens on the same one).
func (s *Server) Addr() netip.AddrPort { return s.engs[0].laddr }

// TCPAddr returns the TCP listener's address, if any.
func (s *Server) TCPAddr() netip.AddrPort { return lnAddr(s.tcpLn) }

// DTLSAddr returns the DTLS listener's address (the TLS port over UDP), if
// any.
func (s *Server) DTLSAddr() netip.AddrPort {
	if s.dtlsLn == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(s.dtlsLn.Addr().String())
	return ap
}

// TLSAddr returns the TLS listener's address, if any.
func (s *Server) TLSAddr() netip.AddrPort { return lnAddr(s.tlsLn) }

func lnAddr(l net.Listener) netip.AddrPort {
	if l == nil {
		return netip.AddrPort{}
	}
	return l.Addr().(*net.TCPAddr).AddrPort()
}

// SetUsers replaces the long-term credential users (name -> password), as
// a reload of the users file does. Existing allocations keep working; their
// next request authenticates against the new set.
func (s *Server) SetUsers(users map[string]string) {
	s.usersMu.Lock()
	s.users = users
	s.usersMu.Unlock()
}

func (s *Server) password(user string) (string, bool) {
	s.usersMu.RLock()
	defer s.usersMu.RUnlock()
	p, ok := s.users[user]
	return p, ok
}

// Allocations returns how many allocations are open.
func (s *Server) Allocations() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.allocs)
}

// Close stops the server, deletes every allocation and waits for its
// goroutines. It is idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		streams := slices.Collect(maps.Keys(s.streams))
		s.mu.Unlock()
		close(s.done)
		s.closeSockets()
		for _, sc := range streams {
			if sc.eng == nil {
				sc.close()
			}
		}
		for _, e := range s.engs {
			e.wake()
		}
		s.wg.Wait()
		// Loop-served connections once their loops have stopped (and the
		// accept loops, which may have added some).
		s.mu.Lock()
		streams = streams[:0]
		for sc := range s.streams {
			streams = append(streams, sc)
		}
		s.mu.Unlock()
		for _, sc := range streams {
			sc.close()
		}
		s.mu.Lock()
		all := slices.Collect(maps.Values(s.allocs))
		s.mu.Unlock()
		for _, a := range all {
			s.deleteAllocation(a)
		}
		// TCP allocations are gone with their connections: their
		// goroutines end.
		s.pipes.Wait()
		s.expireReservations(0)
		for _, e := range s.engs {
			e.close()
		}
	})
	return nil
}

func (s *Server) closeSockets() {
	if s.tcpLn != nil {
		_ = s.tcpLn.Close()
	}
	if s.tlsLn != nil {
		_ = s.tlsLn.Close()
	}
	if s.dtlsLn != nil {
		_ = s.dtlsLn.Close()
	}
}

// relayStats accumulates one reader's data path counters for a batch, so
// shared counters are touched once per batch rather than per packet.
type relayStats struct {
	packets, bytes                            int
	noAlloc, noChan, noPerm, bw, sendErr, bad int
	// toPeer, when set (by an event loop, for one batch read from its
	// listener), takes ChannelData payloads to send to their peers in one
	// batch; it returns false when the payload must go out now.
	toPeer peerQueue
}

// peerQueue batches datagrams to peers, each from its relayed address.
type peerQueue interface {
	queue(data []byte, from, to netip.AddrPort) bool
}

func (st *relayStats) flush(m *metrics) {
	if st.packets > 0 {
		m.toPeerPackets.Add(float64(st.packets))
		m.toPeerBytes.Add(float64(st.bytes))
	}
	if st.noAlloc+st.noChan+st.noPerm+st.bw+st.sendErr+st.bad > 0 {
		addIf(m.dropNoAllocation, st.noAlloc)
		addIf(m.dropNoChannel, st.noChan)
		addIf(m.dropNoPermission, st.noPerm)
		addIf(m.dropBandwidth, st.bw)
		addIf(m.dropSendError, st.sendErr)
		addIf(m.badUDP, st.bad)
	}
	*st = relayStats{}
}

type counter interface{ Add(float64) }

func addIf(c counter, n int) {
	if n > 0 {
		c.Add(float64(n))
	}
}

func (s *Server) lookup(key fiveTuple) *allocation {
	s.mu.RLock()
	a := s.allocs[key]
	s.mu.RUnlock()
	return a
}

// sender returns the allocation of the client that sent a packet to
// relay, or nil, counting a packet that did not parse (err) or has no
// allocation.
func (s *Server) sender(key fiveTuple, err error, st *relayStats) *allocation {
	if err != nil {
		st.bad++
		return nil
	}
	a := s.lookup(key)
	if a == nil {
		st.noAlloc++
	}
	return a
}

// sent counts a datagram of n bytes handed to the kernel (or queued for
// it), or the error that refused it.
func (st *relayStats) sent(err error, n int) {
	if err != nil {
		st.sendErr++
		return
	}
	st.packets++
	st.bytes += n
}

// relayChannelData sends a client's ChannelData payload to the channel's
// peer (RFC 8656 section 12.6), straight from the receive buffer.
func (s *Server) relayChannelData(key fiveTuple, b []byte, st *relayStats) {
	num, data, err := parseChannelData(b)
	a := s.sender(key, err, st)
	if a == nil {
		return
	}
	now := time.Now().UnixNano()
	a.mu.Lock()
	ch := a.chans[num]
	switch {
	case a.closed:
		st.noAlloc++
	case ch == nil || ch.expires <= now:
		st.noChan++
	case !a.permittedLocked(ch.peer.Addr(), now):
		st.noPerm++
	case !a.up.take(len(data), now, s.cfg.BandwidthPerAllocation):
		st.bw++
	case st.toPeer != nil && st.toPeer.queue(data, a.relayed, ch.peer):
		st.sent(nil, len(data))
	default:
		st.sent(udpio.SendTo(a.fd, data, &ch.sa), len(data))
	}
	a.mu.Unlock()
}

// relaySend sends a Send indication's DATA to its peer (RFC 8656 section
// 11.3). Indications get no answer: failures are counted only.
func (s *Server) relaySend(key fiveTuple, b []byte, st *relayStats) {
	peer, data, err := parseSendIndication(b)
	a := s.sender(key, err, st)
	if a == nil {
		return
	}
	if !s.peerAllowed(peer, true, false) {
		s.m.refusedPeers.Inc()
		return
	}
	var sa udpio.Sockaddr
	if !sa.Set(peer, s.cfg.RelayIP.Is6()) {
		st.sendErr++
		return
	}
	now := time.Now().UnixNano()
	a.mu.Lock()
	switch {
	case a.closed:
		st.noAlloc++
	case a.tcp != nil:
		st.sendErr++ // a TCP allocation relays over its data connections only
	case !a.permittedLocked(peer.Addr(), now):
		st.noPerm++
	case !a.up.take(len(data), now, s.cfg.BandwidthPerAllocation):
		st.bw++
	default:
		st.sent(udpio.SendTo(a.fd, data, &sa), len(data))
	}
	a.mu.Unlock()
}

// openRelay binds a relay socket on a free port of the range.
// With even set, only even ports qualify (EVEN-PORT, RFC 8656 section
// 14.6).
func (s *Server) openRelay(e *engine, even bool) (int, netip.AddrPort, error) {
	lo, hi := int(s.cfg.RelayPortLow), int(s.cfg.RelayPortHigh)
	span := hi - lo + 1
	start := rand.IntN(span)
	for i := 0; i < span; i++ {
		port := uint16(lo + (start+i)%span)
		if even && port%2 != 0 {
			continue
		}
		ap := netip.AddrPortFrom(s.cfg.RelayIP, port)
		s.mu.RLock()
		_, used := s.byRelay[ap]
		s.mu.RUnlock()
		if used {
			continue
		}
		fd, err := e.open(ap)
		if err == nil {
			return fd, ap, nil
		}
		if !errors.Is(err, errAddrInUse) {
			return -1, netip.AddrPort{}, err
		}
	}
	return -1, netip.AddrPort{}, ErrNoRelayPort
}

// deleteAllocation removes a from the indexes and releases its socket. It
// is safe to call twice.
func (s *Server) deleteAllocation(a *allocation) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.closed = true
	nperm, nchan := len(a.perms), len(a.chans)
	a.mu.Unlock()
	a.dead.Store(true)
	s.offloadDrop(a)
	if a.tcp != nil {
		s.deleteTCPAllocation(a, nperm)
		return
	}
	rs := a.sock
	s.mu.Lock()
	if s.allocs[a.key] == a {
		delete(s.allocs, a.key)
	}
	rs.users--
	if rs.shared {
		for ip, o := range rs.owners {
			if o == a {
				delete(rs.owners, ip)
			}
		}
	} else if rs.single == a {
		rs.single = nil
	}
	last := rs.users <= 0
	if last {
		delete(s.byFD, int32(rs.fd))
		delete(s.byRelay, rs.addr)
	}
	s.releaseUserLocked(a.user)
	s.mu.Unlock()
	// closed is set under a.mu, and every user of fd holds a.mu and checks
	// closed; a shared socket goes with its last user.
	if last {
		rs.eng.remove(rs.fd)
	}
	s.m.allocations.Dec()
	s.m.permissions.Sub(float64(nperm))
	s.m.channels.Sub(float64(nchan))
}

// sweepLoop expires allocations, permissions and channels (RFC 8656
// sections 7, 9 and 12) and forgets old failed-auth windows.
func (s *Server) sweepLoop() {
	t := time.NewTicker(s.sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			now := time.Now()
			s.sweep(now.UnixNano())
			s.offloadPoll(now)
		}
	}
}

func (s *Server) sweep(now int64) {
	s.expireReservations(now)
	s.mu.RLock()
	all := slices.Collect(maps.Values(s.allocs))
	s.mu.RUnlock()
	for _, a := range all {
		a.mu.Lock()
		expired := a.expires <= now
		var dp, dc int
		var gone []netip.Addr
		if !expired {
			for ip, exp := range a.perms {
				if exp <= now {
					delete(a.perms, ip)
					gone = append(gone, ip)
					dp++
				}
			}
			for num, ch := range a.chans {
				if ch.expires <= now {
					delete(a.chans, num)
					delete(a.byPeer, ch.peer)
					dc++
				}
			}
		}
		a.mu.Unlock()
		if expired {
			s.deleteAllocation(a)
			continue
		}
		if len(gone) > 0 {
			s.releasePeers(a, gone)
		}
		if dp+dc > 0 {
			s.offloadSync(a)
		}
		s.m.permissions.Sub(float64(dp))
		s.m.channels.Sub(float64(dc))
	}
	s.fails.sweep(now)
	s.sweepStreams(now)
}
