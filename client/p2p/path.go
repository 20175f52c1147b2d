package p2p

import (
	"fmt"
	"net"
	"net/netip"
	"time"
)

// PathKind is how datagrams travel between the peers, best first.
type PathKind uint8

const (
	// PathNone: no working path (connecting, or the live path died).
	PathNone PathKind = iota
	// PathDirect: peer to peer, through the NATs.
	PathDirect
	// PathRelayNode: through a relay node both peers reach (WithRelayNodes).
	PathRelayNode
	// PathTURNUDP, PathTURNTCP, PathTURNTLS: through a TURN allocation
	// whose client reaches its server over UDP, TCP or TLS.
	PathTURNUDP
	PathTURNTCP
	PathTURNTLS
)

var pathNames = [...]string{"none", "direct", "relay-node", "turn-udp", "turn-tcp", "turn-tls"}

func (k PathKind) String() string {
	if int(k) < len(pathNames) {
		return pathNames[k]
	}
	return fmt.Sprintf("PathKind(%d)", k)
}

// better reports whether k is preferred to o (PathNone is worst).
func (k PathKind) better(o PathKind) bool {
	if o == PathNone {
		return k != PathNone
	}
	return k != PathNone && k < o
}

func turnKind(transport string) PathKind {
	switch transport {
	case "tcp":
		return PathTURNTCP
	case "tls":
		return PathTURNTLS
	}
	return PathTURNUDP
}

// Path is the path this side sends on.
type Path struct {
	Kind PathKind
	// Local is the local end (the UDP socket, or the TURN relayed address);
	// Remote the peer's address the datagrams go to.
	Local, Remote netip.AddrPort
	// RTT is the path's smoothed round-trip time (probe to ack).
	RTT time.Duration
	// Candidate is the kind of the peer's candidate the path goes to:
	// "host", "srflx", "mapped", "prflx", "predicted", "relay" or
	// "relay-node".
	Candidate string
}

func (p Path) String() string {
	if p.Kind == PathNone {
		return "none"
	}
	return fmt.Sprintf("%s %s -> %s rtt %s", p.Kind, p.Local, p.Remote, p.RTT.Round(10*time.Microsecond))
}

// PathChange reports that the path this side sends on changed.
type PathChange struct {
	From, To Path
	At       time.Time
	// Reason: "first", "upgrade" (a better path answered), "failover"
	// (the live path stopped answering), "lost" (no path left).
	Reason string
}

// base is a local end that datagrams leave from and arrive at: the UDP
// socket (direct) or a TURN allocation. A relay-node path is one more base
// (Kind PathRelayNode): LocalAddr is the address the node gives this peer,
// WriteTo frames a datagram to the peer's address through the node and
// ReadFrom returns what the node delivers with the peer's address as
// source. Probes, acks and data flow unchanged over it.
type base interface {
	Kind() PathKind
	LocalAddr() netip.AddrPort
	WriteTo(p []byte, to netip.AddrPort) error
	ReadFrom(p []byte) (int, netip.AddrPort, error)
	Close() error
}

// udpBase is the direct socket.
type udpBase struct {
	pc    net.PacketConn
	local netip.AddrPort
}

func (b *udpBase) Kind() PathKind            { return PathDirect }
func (b *udpBase) LocalAddr() netip.AddrPort { return b.local }
func (b *udpBase) Close() error              { return b.pc.Close() }

func (b *udpBase) WriteTo(p []byte, to netip.AddrPort) error {
	if u, ok := b.pc.(*net.UDPConn); ok {
		_, err := u.WriteToUDPAddrPort(p, to)
		return err
	}
	_, err := b.pc.WriteTo(p, net.UDPAddrFromAddrPort(to))
	return err
}

func (b *udpBase) ReadFrom(p []byte) (int, netip.AddrPort, error) {
	if u, ok := b.pc.(*net.UDPConn); ok {
		n, from, err := u.ReadFromUDPAddrPort(p)
		return n, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), err
	}
	n, a, err := b.pc.ReadFrom(p)
	if err != nil {
		return n, netip.AddrPort{}, err
	}
	return n, addrPortOf(a), nil
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if u, ok := a.(*net.UDPAddr); ok {
		ap := u.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
