package testkit

import (
	"net"
	"net/netip"
	"sync"
	"testing"
)

// UDPProxy relays datagrams between whoever sends to its front address
// (the last sender) and target, each one unless drop, when set, says to
// drop it (up: from the front towards target). It returns the front
// address and the address target sees the traffic come from; the test's
// cleanup stops it.
func UDPProxy(t testing.TB, target netip.AddrPort, drop func(up bool) bool) (front, source netip.AddrPort) {
	t.Helper()
	if drop == nil {
		drop = func(bool) bool { return false }
	}
	lo := netip.MustParseAddrPort("127.0.0.1:0")
	fc, back := ListenUDP(t, lo), ListenUDP(t, lo)
	var mu sync.Mutex // guards client
	var client netip.AddrPort
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := fc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			mu.Lock()
			client = from
			mu.Unlock()
			if !drop(true) {
				_, _ = back.WriteToUDPAddrPort(buf[:n], target)
			}
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			n, _, err := back.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			mu.Lock()
			c := client
			mu.Unlock()
			if c.IsValid() && !drop(false) {
				_, _ = fc.WriteToUDPAddrPort(buf[:n], c)
			}
		}
	}()
	t.Cleanup(func() { fc.Close(); back.Close(); wg.Wait() })
	return fc.LocalAddr().(*net.UDPAddr).AddrPort(), back.LocalAddr().(*net.UDPAddr).AddrPort()
}
