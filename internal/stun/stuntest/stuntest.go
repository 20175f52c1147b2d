// Package stuntest starts traverse STUN servers for tests: by default the
// full RFC 5780 server on loopback (127.0.0.1 and 127.0.0.2, free ports),
// stopped when the test ends.
package stuntest

import (
	"github.com/traverse-rtc/traverse/internal/testkit"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/stun"
)

// Start starts a server with cfg and stops it (releasing its sockets) when
// the test ends. A zero cfg.Listen means 127.0.0.1:0; set
// cfg.OtherAddress (for example with RFC5780) for NAT discovery. It must be
// called where the sockets are to live (inside a network namespace, from a
// thread locked into it). reg may be nil.
func Start(tb testing.TB, cfg stun.Config, reg prometheus.Registerer) *stun.Server {
	tb.Helper()
	if !cfg.Listen.IsValid() {
		cfg.Listen = netip.MustParseAddrPort("127.0.0.1:0")
	}
	if reg != nil {
		cfg.Registerer = reg
	}
	if cfg.Readers == 0 {
		cfg.Readers = 1
	}
	s, err := stun.New(cfg)
	if err != nil {
		tb.Fatalf("stuntest: %v", err)
	}
	testkit.Run(tb, s.Run)
	deadline := time.Now().Add(5 * time.Second)
	for s.Ready() != nil {
		if time.Now().After(deadline) {
			tb.Fatalf("stuntest: server not ready after 5s")
		}
		time.Sleep(time.Millisecond)
	}
	return s
}

// RFC5780 starts the RFC 5780 server on 127.0.0.1 and 127.0.0.2 (both
// loopback on Linux), free ports.
func RFC5780(tb testing.TB) *stun.Server {
	tb.Helper()
	return Start(tb, stun.Config{Listen: netip.MustParseAddrPort("127.0.0.1:0"), OtherAddress: netip.MustParseAddr("127.0.0.2")}, nil)
}
