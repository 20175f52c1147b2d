// Package turntest holds what tests of TURN share: peers that echo or
// count what the relay sends them, and pion clients over UDP or TCP. Every
// goroutine it starts is waited for at the test's cleanup, so tests that
// check for leaked goroutines can use it.
package turntest

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/turn/v4"
)

// ServeUDP calls handle with each datagram c receives, until the test
// ends; then it closes c and waits for its loop.
func ServeUDP(t testing.TB, c *net.UDPConn, handle func(p []byte, from netip.AddrPort)) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			handle(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
}

// UDPEcho is a UDP peer on 127.0.0.1 that sends every datagram back.
func UDPEcho(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ServeUDP(t, c, func(p []byte, from netip.AddrPort) { _, _ = c.WriteToUDPAddrPort(p, from) })
	return c
}

// ServeTCP calls handle, in a goroutine of its own, with each connection
// ln accepts, until the test ends; then it closes ln and every accepted
// connection and waits for the handlers.
func ServeTCP(t testing.TB, ln net.Listener, handle func(net.Conn)) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex // guards conns
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); handle(c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// TCPEcho is a TCP peer on 127.0.0.1 that echoes what each connection
// sends. accepted receives the first 16 connections it accepts.
func TCPEcho(t testing.TB) (addr netip.AddrPort, accepted <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acc := make(chan net.Conn, 16)
	ServeTCP(t, ln, func(c net.Conn) {
		select {
		case acc <- c:
		default:
		}
		_, _ = io.Copy(c, c)
	})
	return ln.Addr().(*net.TCPAddr).AddrPort(), acc
}

// TCPClient is a pion TURN client over a TCP connection to server,
// listening, closed at the test's end. Its AllocateTCP makes an RFC 6062
// allocation.
func TCPClient(t testing.TB, server, user, pass, realm string) *turn.Client {
	t.Helper()
	ctl, err := net.Dial("tcp", server)
	if err != nil {
		t.Fatal(err)
	}
	c, err := turn.NewClient(&turn.ClientConfig{STUNServerAddr: server, TURNServerAddr: server,
		Username: user, Password: pass, Realm: realm, Conn: turn.NewSTUNConn(ctl)})
	if err != nil {
		ctl.Close()
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	return c
}

// Client is a pion TURN client over conn (nil: a fresh UDP socket on
// 127.0.0.1), listening, retransmitting every 200 ms; it and conn are
// closed at the test's end.
func Client(t testing.TB, server, user, pass, realm string, conn net.PacketConn) *turn.Client {
	t.Helper()
	if conn == nil {
		var err error
		if conn, err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	c, err := turn.NewClient(&turn.ClientConfig{STUNServerAddr: server, TURNServerAddr: server,
		Username: user, Password: pass, Realm: realm, Conn: conn, RTO: 200 * time.Millisecond})
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); conn.Close() })
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	return c
}
