package turn

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/pion/stun/v3"
)

// TCP allocations (RFC 6062): a client on a TCP or TLS control connection
// allocates with REQUESTED-TRANSPORT=TCP and gets a relayed address that
// is a listening TCP socket. Connect (section 5.2) opens a connection from
// that address to a permitted peer; a peer connecting to it (section 5.3)
// is announced with a ConnectionAttempt indication. Either way the peer
// data connection gets a CONNECTION-ID, and the client opens a new TCP
// connection to the server, a client data connection, whose first and
// only STUN message is a ConnectionBind naming that ID (section 5.4);
// from then on the two connections are piped as they are.
//
// This is the control path's business, not the media path's: each piped
// pair has two goroutines and each TCP allocation an accept goroutine.

// RFC 6062 timers.
const (
	// tcpConnectTimeout bounds an outgoing Connect (section 5.2: at
	// least 30 seconds), after which the answer is 447.
	tcpConnectTimeout = 30 * time.Second
	// tcpBindTimeout is how long a peer data connection waits for its
	// ConnectionBind before it is closed (sections 5.2 and 5.3).
	tcpBindTimeout = 30 * time.Second
	// maxTCPConns caps the peer data connections of one allocation
	// (pending and bound); beyond it Connect gets 508 and incoming
	// connections are closed.
	maxTCPConns = 128
)

// RFC 6062 wire values.
const (
	transportTCP = 6
	transportUDP = 17
)

// tcpRelay is the TCP side of an allocation.
type tcpRelay struct {
	ln net.Listener // on the relayed address
	// Guarded by the allocation's mu.
	conns  map[uint32]*peerConn
	byPeer map[netip.AddrPort]*peerConn
}

// peerConn is one peer data connection and, once bound, its client data
// connection.
type peerConn struct {
	id   uint32
	a    *allocation
	peer netip.AddrPort

	mu     sync.Mutex // guards the fields below
	c      net.Conn   // peer data connection; nil while Connect dials
	client net.Conn   // client data connection, once bound
	bound  bool
	closed bool
	timer  *time.Timer // closes a connection never bound
}

// close closes both connections and forgets pc. Idempotent.
func (pc *peerConn) close(s *Server) {
	pc.mu.Lock()
	if pc.closed {
		pc.mu.Unlock()
		return
	}
	pc.closed = true
	if pc.timer != nil {
		pc.timer.Stop()
	}
	c, client := pc.c, pc.client
	pc.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
	if client != nil {
		_ = client.Close()
	}
	a := pc.a
	a.mu.Lock()
	if a.tcp.conns[pc.id] == pc {
		delete(a.tcp.conns, pc.id)
	}
	if a.tcp.byPeer[pc.peer] == pc {
		delete(a.tcp.byPeer, pc.peer)
	}
	a.mu.Unlock()
	s.mu.Lock()
	if s.tcpConns[pc.id] == pc {
		delete(s.tcpConns, pc.id)
	}
	s.mu.Unlock()
	s.m.tcpConns.Dec()
}

// register gives pc a fresh CONNECTION-ID and indexes it; false when the
// allocation is gone or at its cap.
func (s *Server) registerPeerConn(pc *peerConn) bool {
	a := pc.a
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed || len(a.tcp.conns) >= maxTCPConns {
		return false
	}
	s.mu.Lock()
	for {
		var b [4]byte
		_, _ = crand.Read(b[:])
		pc.id = binary.BigEndian.Uint32(b[:])
		if _, taken := s.tcpConns[pc.id]; !taken && pc.id != 0 {
			break
		}
	}
	s.tcpConns[pc.id] = pc
	s.mu.Unlock()
	a.tcp.conns[pc.id] = pc
	a.tcp.byPeer[pc.peer] = pc
	s.m.tcpConns.Inc()
	return true
}

// armBindTimer closes pc unless a ConnectionBind claims it in time.
func (s *Server) armBindTimer(pc *peerConn) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.closed || pc.bound {
		return
	}
	pc.timer = time.AfterFunc(s.bindTimeout, func() {
		pc.mu.Lock()
		bound := pc.bound
		pc.mu.Unlock()
		if !bound {
			s.m.tcpTimeouts.Inc()
			pc.close(s)
		}
	})
}

// openTCPRelay binds a listening TCP socket on a free port of the range.
func (s *Server) openTCPRelay() (net.Listener, netip.AddrPort, error) {
	lo, hi := int(s.cfg.RelayPortLow), int(s.cfg.RelayPortHigh)
	span := hi - lo + 1
	start := rand.IntN(span)
	lc := net.ListenConfig{Control: reuseControl}
	for i := 0; i < span; i++ {
		ap := netip.AddrPortFrom(s.cfg.RelayIP, uint16(lo+(start+i)%span))
		s.mu.Lock()
		used := s.tcpRelays[ap]
		if !used {
			s.tcpRelays[ap] = true
		}
		s.mu.Unlock()
		if used {
			continue
		}
		ln, err := lc.Listen(context.Background(), "tcp", ap.String())
		if err == nil {
			return ln, ap, nil
		}
		s.mu.Lock()
		delete(s.tcpRelays, ap)
		s.mu.Unlock()
		if !isAddrInUse(err) {
			return nil, netip.AddrPort{}, err
		}
	}
	return nil, netip.AddrPort{}, ErrNoRelayPort
}

func isAddrInUse(err error) bool { return errors.Is(err, errAddrInUse) }

// closeTCPRelay ends a deleted allocation's listener and connections.
func (s *Server) closeTCPRelay(a *allocation) {
	_ = a.tcp.ln.Close()
	a.mu.Lock()
	conns := slices.Collect(maps.Values(a.tcp.conns))
	a.mu.Unlock()
	for _, pc := range conns {
		pc.close(s)
	}
	s.mu.Lock()
	delete(s.tcpRelays, a.relayed)
	s.mu.Unlock()
}

// acceptPeers serves the relayed address's listener (RFC 6062 section
// 5.3): a peer with a permission is announced to the client with a
// ConnectionAttempt indication; any other is closed at once.
func (s *Server) acceptPeers(a *allocation) {
	for {
		c, open := s.accept(a.tcp.ln)
		if !open {
			return
		}
		ap := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		peer := netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		a.mu.Lock()
		ok := !a.closed && a.permittedLocked(peer.Addr(), time.Now().UnixNano()) && a.tcp.byPeer[peer] == nil
		a.mu.Unlock()
		if !ok || !s.relayFilter.AllowedIP(peer.Addr()) {
			s.m.dropNoPermission.Inc()
			_ = c.Close()
			continue
		}
		pc := &peerConn{a: a, peer: peer, c: c}
		if !s.registerPeerConn(pc) {
			s.m.quotaHits.WithLabelValues("tcp_conns").Inc()
			_ = c.Close()
			continue
		}
		s.armBindTimer(pc)
		var tid [stun.TransactionIDSize]byte
		_, _ = crand.Read(tid[:])
		ind, err := stun.Build(stun.NewTransactionIDSetter(tid), stun.NewType(stun.MethodConnectionAttempt, stun.ClassIndication),
			&xorAddr{t: stun.AttrXORPeerAddress, ap: peer}, connectionID(pc.id), stun.Fingerprint)
		if err != nil {
			pc.close(s)
			continue
		}
		a.out.send(ind.Raw)
	}
}

func connectionID(id uint32) stun.Setter {
	return rawAttr{stun.AttrConnectionID, binary.BigEndian.AppendUint32(nil, id)}
}

// detached returns a copy of r that outlives the buffer r.m was read into,
// for answers sent later from another goroutine.
func (r *request) detached() *request {
	r2 := *r
	r2.m = new(stun.Message)
	_ = r.m.CloneTo(r2.m)
	return &r2
}

// connect answers a Connect request (RFC 6062 section 5.2): 400 without a
// peer or on a UDP allocation, 403 for a filtered or unpermitted peer, 446
// when a connection to that peer exists or is being made, 447 when it
// cannot be made; success carries the CONNECTION-ID.
func (r *request) connect() {
	s := r.s
	a := r.owned()
	if a == nil {
		return
	}
	peers, ok := r.peers()
	if a.tcp == nil || !ok || len(peers) != 1 {
		r.fail(stun.CodeBadRequest, nil)
		return
	}
	peer := peers[0]
	if !r.checkPeer(a, peer, true) {
		return
	}
	a.mu.Lock()
	permitted := a.permittedLocked(peer.Addr(), r.now.UnixNano())
	exists := a.tcp.byPeer[peer] != nil
	a.mu.Unlock()
	switch {
	case !permitted:
		s.m.dropNoPermission.Inc()
		r.fail(stun.CodeForbidden, nil)
		return
	case exists:
		r.fail(stun.CodeConnAlreadyExists, nil)
		return
	}
	pc := &peerConn{a: a, peer: peer}
	if !s.registerPeerConn(pc) {
		s.m.quotaHits.WithLabelValues("tcp_conns").Inc()
		r.fail(stun.CodeInsufficientCapacity, nil)
		return
	}
	r2 := r.detached()
	s.pipes.Add(1)
	go func() {
		defer s.pipes.Done()
		d := net.Dialer{Timeout: s.connectTimeout, Control: reuseControl,
			LocalAddr: net.TCPAddrFromAddrPort(a.relayed)}
		ctx, cancel := context.WithCancel(context.Background())
		go func() { // Close ends a dial in progress
			select {
			case <-s.done:
				cancel()
			case <-ctx.Done():
			}
		}()
		c, err := d.DialContext(ctx, "tcp", peer.String())
		cancel()
		if err != nil {
			s.m.tcpConnectFailures.Inc()
			pc.close(s)
			r2.fail(stun.CodeConnTimeoutOrFailure, nil)
			return
		}
		pc.mu.Lock()
		if pc.closed {
			pc.mu.Unlock()
			_ = c.Close()
			r2.fail(stun.CodeConnTimeoutOrFailure, nil)
			return
		}
		pc.c = c
		pc.mu.Unlock()
		s.armBindTimer(pc)
		r2.ok(connectionID(pc.id))
	}()
}

// connectionBind answers a ConnectionBind request (RFC 6062 section 5.4)
// on a new client connection: 400 over UDP or DTLS, on a connection that
// has an allocation or is bound already, and for a CONNECTION-ID that
// names no pending peer data connection; 441 when another user asks. On
// success the connection carries the peer's bytes from then on.
func (r *request) connectionBind() {
	s := r.s
	if !r.authenticate() {
		return
	}
	sc := r.out.stream
	v, err := r.m.Get(stun.AttrConnectionID)
	if sc == nil || sc.datagram || err != nil || len(v) != 4 {
		r.fail(stun.CodeBadRequest, nil)
		return
	}
	sc.mu.Lock()
	busy := sc.alloc != nil || sc.bound != nil
	sc.mu.Unlock()
	s.mu.RLock()
	pc := s.tcpConns[binary.BigEndian.Uint32(v)]
	s.mu.RUnlock()
	if busy || pc == nil {
		r.fail(stun.CodeBadRequest, nil)
		return
	}
	if pc.a.user != r.user {
		s.m.authFailures.WithLabelValues("wrong_credentials").Inc()
		r.fail(stun.CodeWrongCredentials, nil)
		return
	}
	pc.mu.Lock()
	claimable := !pc.closed && !pc.bound && pc.c != nil
	if claimable {
		pc.bound = true
		if pc.timer != nil {
			pc.timer.Stop()
		}
	}
	pc.mu.Unlock()
	if !claimable {
		r.fail(stun.CodeBadRequest, nil)
		return
	}
	r.ok()
	// The reader of sc sees bound once this message is handled and
	// hands the connection over to pipe.
	sc.mu.Lock()
	sc.bound = pc
	sc.mu.Unlock()
}

// pipe relays between a bound client data connection and its peer data
// connection until either ends, then closes both (RFC 6062 section 5.5).
// early holds client bytes read past the ConnectionBind; pending, bytes
// for the client the server had queued before the hand-over.
func (s *Server) pipe(pc *peerConn, client net.Conn, early, pending []byte) {
	pc.mu.Lock()
	if pc.closed {
		pc.mu.Unlock()
		_ = client.Close()
		return
	}
	pc.client = client
	peer := pc.c
	pc.mu.Unlock()
	s.pipes.Add(2)
	go func() {
		defer s.pipes.Done()
		defer pc.close(s)
		if len(pending) > 0 {
			if _, err := client.Write(pending); err != nil {
				return
			}
		}
		s.copyCounted(client, peer, pc.a, false)
	}()
	go func() {
		defer s.pipes.Done()
		defer pc.close(s)
		if len(early) > 0 {
			if _, err := peer.Write(early); err != nil {
				return
			}
			s.m.toPeerBytes.Add(float64(len(early)))
		}
		s.copyCounted(peer, client, pc.a, true)
	}()
}

// copyCounted copies src to dst, counting relayed bytes and chunks as it
// goes (live metrics) and holding to the allocation's bandwidth limit by
// waiting, since TCP cannot drop.
func (s *Server) copyCounted(dst io.Writer, src io.Reader, a *allocation, toPeer bool) {
	rate := s.cfg.BandwidthPerAllocation
	size := int64(16 << 10)
	if rate > 0 {
		size = min(size, rate) // a chunk must fit the bucket
	}
	buf := make([]byte, size)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if rate > 0 {
				for {
					now := time.Now().UnixNano()
					a.mu.Lock()
					b := &a.down
					if toPeer {
						b = &a.up
					}
					ok := b.take(n, now, rate)
					a.mu.Unlock()
					if ok {
						break
					}
					s.m.dropBandwidth.Inc() // throttled, not dropped
					select {
					case <-s.done:
						return
					case <-time.After(time.Duration(int64(n) * int64(time.Second) / rate)):
					}
				}
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			if toPeer {
				s.m.toPeerPackets.Inc()
				s.m.toPeerBytes.Add(float64(n))
			} else {
				s.m.toClientPackets.Inc()
				s.m.toClientBytes.Add(float64(n))
			}
		}
		if err != nil {
			return
		}
	}
}

// deleteTCPAllocation is deleteAllocation's part for a TCP allocation:
// out of the indexes, then its listener and connections closed.
func (s *Server) deleteTCPAllocation(a *allocation, nperm int) {
	s.mu.Lock()
	if s.allocs[a.key] == a {
		delete(s.allocs, a.key)
	}
	s.releaseUserLocked(a.user)
	s.mu.Unlock()
	s.closeTCPRelay(a)
	s.m.allocations.Dec()
	s.m.permissions.Sub(float64(nperm))
}

// allocateTCP finishes an Allocate for REQUESTED-TRANSPORT=TCP (RFC 6062
// section 5.1) once the user's quota slot is held: the relayed address
// is a listening TCP socket from the relay port range.
func (r *request) allocateTCP(d time.Duration) {
	s := r.s
	ln, relayed, err := s.openTCPRelay()
	if err != nil {
		r.releaseQuota()
		if errors.Is(err, ErrNoRelayPort) {
			s.m.quotaHits.WithLabelValues("ports").Inc()
		} else {
			s.cfg.Log.Warn("turn: tcp relay socket", "err", err)
		}
		r.fail(stun.CodeInsufficientCapacity, nil)
		return
	}
	a := &allocation{key: r.key, out: r.out, fd: -1, relayed: relayed, user: r.user, integ: r.integ,
		tid: r.m.TransactionID, expires: r.now.Add(d).UnixNano(),
		tcp: &tcpRelay{ln: ln, conns: map[uint32]*peerConn{}, byPeer: map[netip.AddrPort]*peerConn{}}}
	s.mu.Lock()
	if s.closed || s.allocs[r.key] != nil {
		s.mu.Unlock()
		r.releaseQuota()
		_ = ln.Close()
		s.mu.Lock()
		delete(s.tcpRelays, relayed)
		s.mu.Unlock()
		r.fail(stun.CodeAllocMismatch, nil)
		return
	}
	s.allocs[r.key] = a
	s.pipes.Add(1)
	s.mu.Unlock()
	go func() { defer s.pipes.Done(); s.acceptPeers(a) }()
	r.out.stream.setAlloc(a)
	s.m.allocations.Inc()
	r.allocated(a, d)
}
