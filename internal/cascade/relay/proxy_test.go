package relay

import (
	"math/rand/v2"
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
	var mu sync.Mutex // guards rng
	rng := rand.New(rand.NewPCG(7, 7))
	return testkit.UDPProxy(t, target, func(bool) bool { mu.Lock(); defer mu.Unlock(); return rng.Float64() < loss })
}
