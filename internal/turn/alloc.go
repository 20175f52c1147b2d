package turn

import (
	"net/netip"
	"sync"
	"time"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

// Transports a client reaches the server over; part of the 5-tuple.
const (
	protoUDP uint8 = iota + 1
	protoTCP
	protoTLS
	protoDTLS
)

// fiveTuple identifies a client's allocation (RFC 8656 section 2): the
// server side of the tuple is implied by the transport (one listener each).
type fiveTuple struct {
	proto  uint8
	client netip.AddrPort
}

// Lifetimes of permissions and channel bindings (RFC 8656 sections 9 and 12).
const (
	permissionLifetime = 300 * time.Second
	channelLifetime    = 600 * time.Second
)

// sender answers one client: over its UDP listener socket or its stream.
type sender struct {
	udp    udpWriter
	shard  int
	stream *streamConn
	addr   netip.AddrPort
}

// udpWriter sends one datagram to a UDP client (the engine's listener).
type udpWriter interface {
	WriteTo(b []byte, addr netip.AddrPort) error
}

func (o sender) send(b []byte) {
	if o.stream != nil {
		o.stream.enqueue(b)
		return
	}
	_ = o.udp.WriteTo(b, o.addr)
}

// channel is one channel binding.
type channel struct {
	num     uint16
	peer    netip.AddrPort
	sa      udpio.Sockaddr // peer encoded for sendto
	expires int64          // unix nanoseconds
}

// allocation is one client's relayed transport address.
type allocation struct {
	key     fiveTuple
	out     sender
	eng     *engine    // the event loop serving fd
	sock    *relaySock // the relay socket, maybe shared; nil for TCP
	tcp     *tcpRelay  // set for a TCP allocation (RFC 6062)
	fd      int        // sock.fd
	dead    deadFlag   // set on delete, before the indexes are cleaned
	relayed netip.AddrPort
	user    string
	integ   []byte // long-term key
	tid     [12]byte
	token   *[8]byte // RESERVATION-TOKEN of the port reserved with it, if any

	mu sync.Mutex // guards everything below
	// closed is set when the allocation is deleted; the relay socket may
	// be closed, so nothing may use fd after seeing it.
	closed  bool
	expires int64                // unix nanoseconds
	perms   map[netip.Addr]int64 // peer IP -> expiry; nil until the first
	chans   map[uint16]*channel  // by number; nil until the first
	byPeer  map[netip.AddrPort]*channel
	up      bucket // client -> peer
	down    bucket // peer -> client
}

// permittedLocked reports whether ip has an unexpired permission.
func (a *allocation) permittedLocked(ip netip.Addr, now int64) bool {
	return a.perms[ip] > now
}

// bucket is a token bucket of bytes refilled at a rate per second, holding
// at most one second's worth.
type bucket struct {
	tokens, last int64
}

func (b *bucket) take(n int, now, rate int64) bool {
	if rate <= 0 {
		return true
	}
	el := now - b.last
	b.last = now
	if el >= int64(time.Second) || el < 0 {
		b.tokens = rate
	} else {
		b.tokens += el * rate / int64(time.Second)
		if b.tokens > rate {
			b.tokens = rate
		}
	}
	if b.tokens < int64(n) {
		return false
	}
	b.tokens -= int64(n)
	return true
}
