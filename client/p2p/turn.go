package p2p

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pion/logging"
	"github.com/pion/turn/v4"
)

// turnBase is a TURN allocation (RFC 8656) made with pion/turn's client
// over UDP, TCP or TLS: datagrams to the peer leave from the relayed
// address.
type turnBase struct {
	kind   PathKind
	client *turn.Client
	relay  net.PacketConn
	ctl    net.PacketConn // UDP socket, or nil
	stream net.Conn       // TCP/TLS connection, or nil
	local  netip.AddrPort
}

func (b *turnBase) Kind() PathKind            { return b.kind }
func (b *turnBase) LocalAddr() netip.AddrPort { return b.local }

func (b *turnBase) WriteTo(p []byte, to netip.AddrPort) error {
	_, err := b.relay.WriteTo(p, net.UDPAddrFromAddrPort(to))
	return err
}

func (b *turnBase) ReadFrom(p []byte) (int, netip.AddrPort, error) {
	n, a, err := b.relay.ReadFrom(p)
	if err != nil {
		return n, netip.AddrPort{}, err
	}
	return n, addrPortOf(a), nil
}

func (b *turnBase) Close() error {
	b.relay.Close()
	b.client.Close()
	if b.ctl != nil {
		b.ctl.Close()
	}
	if b.stream != nil {
		b.stream.Close()
	}
	return nil
}

// allocate makes one allocation on s within timeout.
func allocate(ctx context.Context, nw Network, s TURNServer, timeout time.Duration) (*turnBase, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	b := &turnBase{kind: turnKind(s.Transport)}
	var conn net.PacketConn
	switch s.Transport {
	case "udp":
		pc, err := nw.ListenUDP(netip.AddrPort{})
		if err != nil {
			return nil, err
		}
		b.ctl, conn = pc, pc
	case "tcp", "tls":
		c, err := nw.Dial(ctx, "tcp", s.Addr)
		if err != nil {
			return nil, fmt.Errorf("p2p: turn %s %s: %w", s.Transport, s.Addr, err)
		}
		if s.Transport == "tls" {
			name := s.ServerName
			if name == "" {
				name, _, _ = net.SplitHostPort(s.Addr)
			}
			tc := tls.Client(c, &tls.Config{ServerName: name, InsecureSkipVerify: s.InsecureSkipVerify, MinVersion: tls.VersionTLS12}) //nolint:gosec // an explicit test option
			if err := tc.HandshakeContext(ctx); err != nil {
				c.Close()
				return nil, fmt.Errorf("p2p: turn tls %s: %w", s.Addr, err)
			}
			c = tc
		}
		b.stream = c
		conn = turn.NewSTUNConn(c)
	}
	lf := logging.NewDefaultLoggerFactory()
	lf.DefaultLogLevel = logging.LogLevelError
	cl, err := turn.NewClient(&turn.ClientConfig{STUNServerAddr: s.Addr, TURNServerAddr: s.Addr,
		Username: s.Username, Password: s.Password, Realm: s.Realm, Conn: conn,
		RTO: 100 * time.Millisecond, LoggerFactory: lf})
	if err != nil {
		closeAll(b.ctl, b.stream)
		return nil, err
	}
	b.client = cl
	if err := cl.Listen(); err != nil {
		cl.Close()
		closeAll(b.ctl, b.stream)
		return nil, err
	}
	type result struct {
		pc  net.PacketConn
		err error
	}
	done := make(chan result, 1)
	go func() { pc, err := cl.Allocate(); done <- result{pc, err} }()
	select {
	case r := <-done:
		if r.err != nil {
			cl.Close()
			closeAll(b.ctl, b.stream)
			return nil, fmt.Errorf("p2p: turn %s %s: %w", s.Transport, s.Addr, r.err)
		}
		b.relay = r.pc
		b.local = addrPortOf(r.pc.LocalAddr())
		return b, nil
	case <-ctx.Done():
		// Closing the client's socket ends the transaction.
		closeAll(b.ctl, b.stream)
		cl.Close()
		if r := <-done; r.pc != nil {
			r.pc.Close()
		}
		return nil, fmt.Errorf("p2p: turn %s %s: %w", s.Transport, s.Addr, ctx.Err())
	}
}

func closeAll(pc net.PacketConn, c net.Conn) {
	if pc != nil {
		pc.Close()
	}
	if c != nil {
		c.Close()
	}
}
