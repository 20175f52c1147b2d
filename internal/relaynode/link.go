package relaynode

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/traverse-rtc/traverse/internal/relayproto"
)

// Link is one peer's end of a session on a relay node: its socket, bound
// to a side with the grant signal gave it. It has the shape of client/p2p's
// path base (WriteTo, ReadFrom, LocalAddr, Close): datagrams written go to
// the session's other peer through the node, and datagrams read come from
// it, with the node's address as their source (the address both peers use
// as the "relay-node" candidate).
type Link struct {
	pc      net.PacketConn
	node    netip.AddrPort
	nodeUDP *net.UDPAddr
	grant   []byte
	session relayproto.Session
	side    uint8

	wmu  sync.Mutex // guards wbuf
	wbuf []byte
	rbuf []byte // ReadFrom's, one reader at a time

	done chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

// BindInterval is how often Bind repeats a bind until the node answers
// ready; KeepaliveInterval how often a bound Link repeats it (which also
// rebinds a peer whose NAT moved it to another port).
const (
	BindInterval      = 100 * time.Millisecond
	KeepaliveInterval = 2 * time.Second
)

// Bind binds pc to its side of grant's session on node and waits until the
// other side is bound too. It returns ErrFull when the node refuses the
// session and ErrUnreachable when ctx ends first. The Link owns pc (any
// UDP net.PacketConn: client/p2p's Network.ListenUDP gives one).
func Bind(ctx context.Context, pc net.PacketConn, node netip.AddrPort, grant []byte) (*Link, error) {
	g, err := relayproto.ParseGrant(grant)
	if err != nil {
		return nil, err
	}
	l := &Link{pc: pc, node: node, nodeUDP: net.UDPAddrFromAddrPort(node), grant: relayproto.AppendBind(nil, grant), session: g.Session, side: g.Side,
		done: make(chan struct{})}
	buf := make([]byte, 2048)
	defer pc.SetReadDeadline(time.Time{})
	for {
		if _, err := pc.WriteTo(l.grant, l.nodeUDP); err != nil {
			return nil, err
		}
		_ = pc.SetReadDeadline(time.Now().Add(BindInterval))
		for {
			if ctx.Err() != nil {
				return nil, ErrUnreachable
			}
			n, from, err := pc.ReadFrom(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return nil, err
			}
			if addrOf(from) != node {
				continue
			}
			s, side, flags, err := relayproto.ParseBound(buf[:n])
			if err != nil || s != l.session || side != l.side {
				continue
			}
			if flags&relayproto.FlagFull != 0 {
				return nil, ErrFull
			}
			if flags&relayproto.FlagReady != 0 {
				l.wg.Add(1)
				go l.keepalive()
				return l, nil
			}
		}
	}
}

func addrOf(a net.Addr) netip.AddrPort {
	ua, ok := a.(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (l *Link) keepalive() {
	defer l.wg.Done()
	t := time.NewTicker(KeepaliveInterval)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			return
		case <-t.C:
			_, _ = l.pc.WriteTo(l.grant, l.nodeUDP)
		}
	}
}

// LocalAddr is the node's address: the peer's candidate for this path.
func (l *Link) LocalAddr() netip.AddrPort { return l.node }

// WriteTo sends p to the other peer through the node (to is ignored: a
// session has one other peer).
func (l *Link) WriteTo(p []byte, _ netip.AddrPort) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.wbuf = relayproto.AppendData(l.wbuf[:0], p)
	_, err := l.pc.WriteTo(l.wbuf, l.nodeUDP)
	return err
}

// ReadFrom reads the next datagram the other peer sent, skipping the
// node's control frames and anything not from the node.
func (l *Link) ReadFrom(p []byte) (int, netip.AddrPort, error) {
	if len(l.rbuf) < len(p)+1 {
		l.rbuf = make([]byte, max(len(p)+1, 2048))
	}
	buf := l.rbuf
	for {
		n, from, err := l.pc.ReadFrom(buf)
		if err != nil {
			return 0, netip.AddrPort{}, err
		}
		if addrOf(from) != l.node || n == 0 || buf[0] != relayproto.TypeData {
			continue
		}
		return copy(p, buf[1:n]), l.node, nil
	}
}

// SetReadDeadline sets the socket's read deadline.
func (l *Link) SetReadDeadline(t time.Time) error { return l.pc.SetReadDeadline(t) }

// Close stops the keepalives and closes the socket.
func (l *Link) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.pc.Close()
		l.wg.Wait()
	})
	return err
}

// Offer is one node of signal's offer, from one peer's side: where it is
// and this peer's grant for it.
type Offer struct {
	Node  string
	Addr  netip.AddrPort
	Grant []byte
}

// BindFirst tries offers in order, as the path sequence says (docs/p2p.md): each for at most per,
// on a fresh socket from listen; the first node both peers reach (Bind
// returns only when the other side is bound too) is kept. Both peers run
// it on the same offer list, so they move to the next node together. It
// returns the link, the index of its offer, and ErrUnreachable when no
// node worked.
func BindFirst(ctx context.Context, listen func() (net.PacketConn, error), offers []Offer, per time.Duration) (*Link, int, error) {
	var errs []error
	for i, o := range offers {
		pc, err := listen()
		if err != nil {
			return nil, -1, err
		}
		tctx, cancel := context.WithTimeout(ctx, per)
		l, err := Bind(tctx, pc, o.Addr, o.Grant)
		cancel()
		if err == nil {
			return l, i, nil
		}
		pc.Close()
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, -1, errors.Join(append([]error{ErrUnreachable}, errs...)...)
}
