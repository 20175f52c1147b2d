// Package testkit holds the small helpers the tests of many packages
// share, so that each is written once: waiting for a condition with a
// deadline (tests never sleep as synchronisation, they poll until what they
// wait for holds or the deadline passes), UDP sockets on a given address
// closed when the test ends, a UDP echo peer, a role's Run for the
// length of a test, and a child process awaited with a deadline.
//
// Helpers for one protocol or lab stay with it (stuntest, kfasttest,
// srtpsealtest, rtpcodectest); this package is for what every test needs.
package testkit

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// Poll is how often WaitFor and Eventually check their condition: short
// enough that a test waits at most a few milliseconds past the moment the
// condition holds, long enough not to keep a core busy while it waits.
const Poll = 5 * time.Millisecond

// Eventually checks cond every Poll until it holds or timeout has passed,
// and reports whether it held. It is for callers that then check and
// report the value themselves (with t.Errorf and the figures they saw).
func Eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(Poll)
	}
	return true
}

// WaitFor checks cond every Poll until it holds, and fails the test with
// "timed out after <timeout> waiting for <what>" if it does not hold
// within timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Eventually(timeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// ListenUDP opens a UDP socket on ap (in the calling goroutine's network
// namespace), failing the test if it cannot, and closes it when the test
// ends.
func ListenUDP(t testing.TB, ap netip.AddrPort) *net.UDPConn {
	t.Helper()
	network := "udp4"
	if ap.Addr().Is6() && !ap.Addr().Is4In6() {
		network = "udp6"
	}
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(ap))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Echo answers every datagram c receives to its sender, until c is closed,
// calling seen (if not nil) with each sender first. c is closed, and the
// echo goroutine waited for, when the test ends.
func Echo(t testing.TB, c *net.UDPConn, seen func(from netip.AddrPort)) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if seen != nil {
				seen(from)
			}
			_, _ = c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); wg.Wait() })
}

// SilenceWindow is how long Silent listens.
const SilenceWindow = 100 * time.Millisecond

// Silent fails the test if a datagram arrives at c within SilenceWindow.
// Callers use it once the packets that could have reached c are
// accounted for (by a counter), so the window only has to cover the last
// hop.
func Silent(t testing.TB, c *net.UDPConn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(SilenceWindow))
	buf := make([]byte, 2048)
	if n, from, err := c.ReadFromUDPAddrPort(buf); err == nil {
		t.Fatalf("%s received %d bytes from %v", what, n, from)
	}
}

// StopTimeout is how long Run waits, when the test ends, for the role to
// return after its context is cancelled.
const StopTimeout = 10 * time.Second

// Run runs run (a role's Run method) in a goroutine until the test ends.
// Then it cancels run's context and waits up to StopTimeout for it to
// return, failing the test if it returns an error or does not return.
func Run(t testing.TB, run func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() { Stop(t, "Run", cancel, done) })
}

// Stop ends a role started in a goroutine: it calls cancel and waits up to
// StopTimeout for the role's result on done, failing the test (with what
// named) if the role returns an error or does not return.
func Stop(t testing.TB, what string, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	case <-time.After(StopTimeout):
		t.Errorf("%s did not return within %v of its context's end", what, StopTimeout)
	}
}
