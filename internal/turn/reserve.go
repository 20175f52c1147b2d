package turn

import (
	crand "crypto/rand"
	"errors"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v3"
)

// Port reservations (RFC 8656 sections 7.2 and 14.9): an Allocate with
// EVEN-PORT and its R bit set gets an even relay port whose next-higher
// port is free too; that port is held for a later Allocate (typically the
// RTCP one of an RTP/RTCP pair) that presents the RESERVATION-TOKEN the
// first answer carried. The held port is a bound relay socket outside any
// event loop, so nobody else can take it; it is released when used or
// after reservationLifetime.

// reservationLifetime is how long a reserved port is held (RFC 8656
// section 7.2: "approximately 30 seconds").
const reservationLifetime = 30 * time.Second

// reservation is one held relay port.
type reservation struct {
	fd      int
	addr    netip.AddrPort
	expires int64 // unix nanoseconds
}

// reservations are a server's held ports by token.
type reservations struct {
	mu      sync.Mutex // guards byToken
	byToken map[[8]byte]reservation
}

// openRelayPair binds an even relay port and the next-higher one, keeps
// the higher one as a reservation, and returns the even one with the
// reservation's token.
func (s *Server) openRelayPair(e *engine, now time.Time) (int, netip.AddrPort, [8]byte, error) {
	var tok [8]byte
	lo, hi := int(s.cfg.RelayPortLow), int(s.cfg.RelayPortHigh)
	span := hi - lo + 1
	start := rand.IntN(span)
	for i := 0; i < span; i++ {
		port := lo + (start+i)%span
		if port%2 != 0 || port+1 > hi {
			continue
		}
		ap := netip.AddrPortFrom(s.cfg.RelayIP, uint16(port))
		next := netip.AddrPortFrom(s.cfg.RelayIP, uint16(port+1))
		s.mu.RLock()
		_, used := s.byRelay[ap]
		_, usedNext := s.byRelay[next]
		s.mu.RUnlock()
		if used || usedNext {
			continue
		}
		fd, err := e.open(ap)
		if err != nil {
			if errors.Is(err, errAddrInUse) {
				continue
			}
			return -1, netip.AddrPort{}, tok, err
		}
		fd2, err := e.open(next)
		if err != nil {
			_ = closeFD(fd)
			if errors.Is(err, errAddrInUse) {
				continue
			}
			return -1, netip.AddrPort{}, tok, err
		}
		_, _ = crand.Read(tok[:])
		s.res.mu.Lock()
		if s.res.byToken == nil {
			s.res.byToken = map[[8]byte]reservation{}
		}
		s.res.byToken[tok] = reservation{fd: fd2, addr: next, expires: now.Add(reservationLifetime).UnixNano()}
		s.res.mu.Unlock()
		s.m.reservations.Inc()
		return fd, ap, tok, nil
	}
	return -1, netip.AddrPort{}, tok, ErrNoRelayPort
}

// takeReservation hands over the port reserved under the request's
// RESERVATION-TOKEN; ErrNoReservation when the token is malformed,
// unknown, used or expired.
func (s *Server) takeReservation(m *stun.Message, now time.Time) (int, netip.AddrPort, error) {
	v, err := m.Get(stun.AttrReservationToken)
	if err != nil || len(v) != 8 {
		return -1, netip.AddrPort{}, ErrNoReservation
	}
	tok := [8]byte(v)
	s.res.mu.Lock()
	rv, ok := s.res.byToken[tok]
	if ok {
		delete(s.res.byToken, tok)
	}
	s.res.mu.Unlock()
	if !ok {
		return -1, netip.AddrPort{}, ErrNoReservation
	}
	s.m.reservations.Dec()
	if rv.expires <= now.UnixNano() {
		_ = closeFD(rv.fd)
		return -1, netip.AddrPort{}, ErrNoReservation
	}
	return rv.fd, rv.addr, nil
}

// expireReservations releases the ports held past their lifetime (all of
// them when now is 0: the server is closing).
func (s *Server) expireReservations(now int64) {
	s.res.mu.Lock()
	var gone []int
	for tok, rv := range s.res.byToken {
		if now == 0 || rv.expires <= now {
			delete(s.res.byToken, tok)
			gone = append(gone, rv.fd)
		}
	}
	s.res.mu.Unlock()
	for _, fd := range gone {
		_ = closeFD(fd)
	}
	s.m.reservations.Sub(float64(len(gone)))
}

// reservationToken is the RESERVATION-TOKEN attribute (RFC 8656 section
// 14.9).
func reservationToken(tok [8]byte) stun.Setter {
	return rawAttr{stun.AttrReservationToken, tok[:]}
}

// evenPort reads EVEN-PORT (RFC 8656 section 14.6): whether it is there,
// and whether its R bit asks for the next port to be reserved.
func evenPort(m *stun.Message) (even, reserve bool) {
	v, err := m.Get(stun.AttrEvenPort)
	if err != nil {
		return false, false
	}
	return true, len(v) >= 1 && v[0]&0x80 != 0
}
