//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package turn

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// rawPeerSetup gives a server with a channel bound to a UDP peer, the
// peer, the allocation's key, and an event loop of its own with a raw
// sender (the running loop's rounds must not interleave with a test's).
func rawPeerSetup(t *testing.T) (*Server, *net.UDPConn, fiveTuple, *engine) {
	t.Helper()
	s, _ := newTestServer(t, func(c *Config) { c.AllowLoopbackPeers = true })
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	_ = peer.SetReadBuffer(4 << 20)
	key, _ := boundChannel(t, s, peer.LocalAddr().(*net.UDPAddr).AddrPort())
	e, err := newEngine(s, 1, netip.MustParseAddrPort("127.0.0.1:0"), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.close)
	if s.engs[0].raw == nil || e.raw == nil || e.staged == nil {
		t.Fatal("the loop has no raw sender (the tests run as root, with CAP_NET_RAW)")
	}
	return s, peer, key, e
}

// TestRawPeerSend checks the batched client->peer path: ChannelData read
// from the listener is queued on the loop's raw sender and leaves in one
// sendmmsg from the relayed address, allocating nothing; with NoRawSend
// the loops have no raw sender.
func TestRawPeerSend(t *testing.T) {
	s, peer, key, e := rawPeerSetup(t)
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

// TestStagedPeerSend checks the batched path of stream clients'
// ChannelData: each payload is copied out of the stream buffer (which
// the loop's next read reuses) before it is queued, all of a round leave
// in one sendmmsg, a full staging area is flushed first, and the path
// allocates nothing.
func TestStagedPeerSend(t *testing.T) {
	s, peer, key, e := rawPeerSetup(t)
	read := func(want string) {
		t.Helper()
		buf := make([]byte, 2048)
		_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := peer.ReadFromUDPAddrPort(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("peer read %q, want %q: %v", buf[:n], want, err)
		}
	}
	// Two frames through one reused buffer, as two reads of stream
	// sockets in one round: both arrive intact.
	sbuf := appendChannelData(nil, 0x4000, []byte("first frame"), false)
	st := relayStats{toPeer: e.staged}
	s.relayChannelData(key, sbuf, &st)
	copy(sbuf, appendChannelData(nil, 0x4000, []byte("other frame"), false))
	s.relayChannelData(key, sbuf, &st)
	if st.packets != 2 || e.raw.Len() != 2 {
		t.Fatalf("not queued: %d packets, %d queued", st.packets, e.raw.Len())
	}
	e.flushPeers()
	read("first frame")
	read("other frame")
	if e.raw.Len() != 0 || len(e.stage) != 0 {
		t.Fatalf("after the flush: %d queued, %d bytes staged", e.raw.Len(), len(e.stage))
	}
	// More than the staging area holds in one round: it is flushed when
	// full, and every payload arrives once.
	big := appendChannelData(nil, 0x4000, make([]byte, 1200), false)
	n := stageSize/1200 + 5
	for i := 0; i < n; i++ {
		s.relayChannelData(key, big, &st)
	}
	e.flushPeers()
	if st.packets != 2+n || e.up.sendErr != 0 {
		t.Fatalf("%d packets counted, %d send errors; want %d, 0", st.packets, e.up.sendErr, 2+n)
	}
	for i := 0; i < n; i++ {
		read(string(make([]byte, 1200)))
	}
	round := func() {
		s.relayChannelData(key, sbuf, &st)
		e.flushPeers()
	}
	if allocs := testing.AllocsPerRun(100, round); allocs != 0 {
		t.Fatalf("%v allocations per packet", allocs)
	}
}
