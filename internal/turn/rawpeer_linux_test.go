//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package turn

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestRawPeerSend checks the batched client->peer path: ChannelData read
// from the listener is queued on the loop's raw sender and leaves in one
// sendmmsg from the relayed address, allocating nothing; with NoRawSend
// the loops have no raw sender.
func TestRawPeerSend(t *testing.T) {
	s, _ := newTestServer(t, func(c *Config) { c.AllowLoopbackPeers = true })
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	_ = peer.SetReadBuffer(1 << 20)
	key, _ := boundChannel(t, s, peer.LocalAddr().(*net.UDPAddr).AddrPort())
	if s.engs[0].raw == nil {
		t.Fatal("the loop has no raw sender (the tests run as root, with CAP_NET_RAW)")
	}
	// A loop of its own, as the running one's rounds must not interleave.
	e, err := newEngine(s, 1, netip.MustParseAddrPort("127.0.0.1:0"), false)
	if err != nil {
		t.Fatal(err)
	}
	defer e.close()
	a := s.lookup(key)
	frame := appendChannelData(nil, 0x4000, []byte("raw relayed"), false)
	st := relayStats{toPeer: e}
	s.relayChannelData(key, frame, &st)
	if st.packets != 1 || e.raw.Len() != 1 {
		t.Fatalf("not queued: %d packets, %d queued", st.packets, e.raw.Len())
	}
	e.flushPeers()
	buf := make([]byte, 100)
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := peer.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "raw relayed" || from != a.relayed {
		t.Fatalf("peer read %q from %v (relayed %v): %v", buf[:n], from, a.relayed, err)
	}
	if e.up.sendErr != 0 {
		t.Fatalf("%d send errors", e.up.sendErr)
	}
	round := func() {
		st.toPeer = e
		s.relayChannelData(key, frame, &st)
		e.flushPeers()
	}
	if allocs := testing.AllocsPerRun(100, round); allocs != 0 {
		t.Fatalf("%v allocations per packet", allocs)
	}
	// Every datagram of those rounds arrived.
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := 0; i < 101; i++ {
		if _, _, err := peer.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatalf("datagram %d of the 101 sent: %v", i, err)
		}
	}

	off, _ := newTestServer(t, func(c *Config) { c.AllowLoopbackPeers = true; c.NoRawSend = true })
	if off.engs[0].raw != nil {
		t.Fatal("NoRawSend: the loop has a raw sender")
	}
}
