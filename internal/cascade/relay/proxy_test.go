package relay

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/traverse-rtc/traverse/internal/testkit"
)

// lossyProxy relays datagrams between whoever sends to its front address
// and target, dropping each one with probability loss in each direction
// (10 % random loss emulated in user space). It returns the front address
// and the address target sees the traffic come from.
func lossyProxy(t *testing.T, target netip.AddrPort, loss float64) (front, source netip.AddrPort) {
	lo := netip.MustParseAddrPort("127.0.0.1:0")
	fc, back := testkit.ListenUDP(t, lo), testkit.ListenUDP(t, lo)
	var mu sync.Mutex // guards client and rng
	var client netip.AddrPort
	rng := rand.New(rand.NewPCG(7, 7))
	drop := func() bool { mu.Lock(); defer mu.Unlock(); return rng.Float64() < loss }
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
			if !drop() {
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
			if c.IsValid() && !drop() {
				_, _ = fc.WriteToUDPAddrPort(buf[:n], c)
			}
		}
	}()
	t.Cleanup(func() { fc.Close(); back.Close(); wg.Wait() })
	return fc.LocalAddr().(*net.UDPAddr).AddrPort(), back.LocalAddr().(*net.UDPAddr).AddrPort()
}
