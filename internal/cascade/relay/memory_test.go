package relay

import (
	"net/netip"
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// allocated is the bytes allocated so far (monotonic: what other tests'
// garbage collections free does not make it move back).
func allocated() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.TotalAlloc
}

// TestIdlePeersAreSmall: a node given 50 peers (a full mesh of 51) holds
// the loss recovery buffers only for the links data crosses: 50 peers
// that only probe cost well under a megabyte in all, and the first data
// message sent to one of them makes that link's sender (about 0.8 MB).
func TestIdlePeersAreSmall(t *testing.T) {
	e, err := New(Config{Node: 1, Listen: netip.MustParseAddrPort("127.0.0.1:0"), Secret: secret, Local: &sfu{},
		Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	peers := map[NodeID]netip.AddrPort{}
	for i := 2; i <= 51; i++ {
		// discard port 9: nothing is sent before a route and a need exist
		peers[NodeID(i)] = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 9)
	}
	before := allocated()
	if err := e.SetPeers(peers); err != nil {
		t.Fatal(err)
	}
	idle := allocated() - before
	if idle > 1<<20 {
		t.Fatalf("50 idle peers hold %d bytes, want under 1 MB", idle)
	}
	e.SetRoutes(1, map[NodeID]NodeID{2: 2})
	if err := e.SetNeed(key, []NodeID{2}); err != nil {
		t.Fatal(err)
	}
	e.Send(key, 0, make([]byte, 100))
	used := allocated() - before - idle
	if used < 512<<10 {
		t.Fatalf("the link data crossed grew by %d bytes: its sender was not made", used)
	}
	t.Logf("50 idle peers: %d KB; the link carrying data: +%d KB", idle>>10, used>>10)
}
