// Package turntest holds helpers for tests that speak TURN to a server:
// pion/turn clients over UDP or over a TCP (or TLS) control connection,
// listening and closed when the test ends. Like stuntest, it is imported by
// turn's own tests and by the command's.
package turntest

import (
	"net"
	"testing"
	"time"

	"github.com/pion/turn/v4"
)

// Credentials are a long-term credential (RFC 8489 section 9.2).
type Credentials struct{ Realm, User, Pass string }

// Client returns a pion/turn client of server (host:port) over conn,
// listening; it and conn are closed when the test ends. A nil conn is a
// fresh UDP socket on 127.0.0.1. Requests are retransmitted every 200 ms.
func Client(tb testing.TB, server string, cred Credentials, conn net.PacketConn) *turn.Client {
	tb.Helper()
	if conn == nil {
		var err error
		if conn, err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
			tb.Fatal(err)
		}
	}
	c, err := turn.NewClient(&turn.ClientConfig{STUNServerAddr: server, TURNServerAddr: server,
		Username: cred.User, Password: cred.Pass, Realm: cred.Realm, Conn: conn, RTO: 200 * time.Millisecond})
	if err != nil {
		conn.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close(); conn.Close() })
	if err := c.Listen(); err != nil {
		tb.Fatal(err)
	}
	return c
}

// TCPClient is Client over a TCP control connection to server (RFC 6062
// allocations need one).
func TCPClient(tb testing.TB, server string, cred Credentials) *turn.Client {
	tb.Helper()
	ctl, err := net.Dial("tcp", server)
	if err != nil {
		tb.Fatal(err)
	}
	return Client(tb, server, cred, turn.NewSTUNConn(ctl))
}

// EchoUDP binds a UDP socket on ip (network "udp4" or "udp6", port 0) and
// serves it as an echo peer (see Echo).
func EchoUDP(tb testing.TB, network string, ip net.IP) *net.UDPConn {
	tb.Helper()
	c, err := net.ListenUDP(network, &net.UDPAddr{IP: ip})
	if err != nil {
		tb.Fatal(err)
	}
	Echo(tb, c)
	return c
}

// Echo serves c, a bound UDP socket (inside a network namespace, say), as
// a peer that sends every datagram back to its sender, until the test
// ends: then c is closed and the echo goroutine waited for.
func Echo(tb testing.TB, c *net.UDPConn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	tb.Cleanup(func() { c.Close(); <-done })
}
