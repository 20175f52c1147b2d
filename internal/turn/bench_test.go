package turn

import (
	"net"
	"net/netip"
	"testing"

	"github.com/pion/stun/v3"
)

// sinkPeer is a UDP peer that drains what it receives.
func sinkPeer(tb testing.TB) netip.AddrPort {
	tb.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	_ = c.SetReadBuffer(8 << 20)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
				return
			}
		}
	}()
	tb.Cleanup(func() { c.Close(); <-done })
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// boundChannel allocates and binds channel 0x4000 to peer; it returns the
// client's 5-tuple.
func boundChannel(tb testing.TB, s *Server, peer netip.AddrPort) (fiveTuple, *stunClient) {
	tb.Helper()
	c := newSTUNClient(tb, s.Addr(), testUser, testPass)
	c.allocate()
	if code := errCode(c.do(stun.MethodChannelBind, channelAttr(0x4000), peerAttr(peer))); code != 0 {
		tb.Fatalf("channel bind: %d", code)
	}
	return fiveTuple{protoUDP, c.c.LocalAddr().(*net.UDPAddr).AddrPort()}, c
}

func channelFrame(n int) []byte {
	return appendChannelData(nil, 0x4000, make([]byte, n), false)
}

// TestDataPathAllocs: the relay paths allocate nothing per packet.
func TestDataPathAllocs(t *testing.T) {
	s, _ := newTestServer(t, func(c *Config) { c.AllowLoopbackPeers = true })
	peer := sinkPeer(t)
	key, c := boundChannel(t, s, peer)
	frame := channelFrame(172)
	var st relayStats
	if n := testing.AllocsPerRun(200, func() { s.relayChannelData(key, frame, &st) }); n != 0 {
		t.Errorf("ChannelData client->peer: %v allocs per packet", n)
	}
	if st.packets == 0 {
		t.Fatalf("nothing relayed: %+v", st)
	}
	send := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodSend, stun.ClassIndication),
		peerAttr(peer), rawAttr{stun.AttrData, make([]byte, 172)}).Raw
	w := &discardWriter{}
	from := key.client
	if n := testing.AllocsPerRun(200, func() { s.handleMessage(send, key, sender{udp: w, addr: from}, &st) }); n != 0 {
		t.Errorf("Send indication client->peer: %v allocs per packet", n)
	}
	// Peer -> client, on an engine of its own (the server's is idle).
	e, err := newEngine(s, 1, netip.MustParseAddrPort("127.0.0.1:0"), false)
	if err != nil {
		t.Fatal(err)
	}
	defer e.close()
	a := s.lookup(key)
	if n := testing.AllocsPerRun(200, func() {
		a.mu.Lock()
		e.toClientLocked(a, 0, 172, peer, 1, &e.down)                               // channel: ChannelData
		e.toClientLocked(a, 1, 172, netip.AddrPortFrom(peer.Addr(), 9), 1, &e.down) // no channel: Data indication
		a.mu.Unlock()
		e.flush()
	}); n != 0 {
		t.Errorf("peer->client: %v allocs per packet", n)
	}
	_ = c
}

// BenchmarkRelayChannelData measures the client->peer ChannelData path:
// 5-tuple lookup, channel and permission checks, one sendto.
func BenchmarkRelayChannelData(b *testing.B) {
	s, _ := newTestServer(b, func(c *Config) { c.AllowLoopbackPeers = true })
	key, _ := boundChannel(b, s, sinkPeer(b))
	frame := channelFrame(172)
	var st relayStats
	b.ReportAllocs()
	b.SetBytes(172)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.relayChannelData(key, frame, &st)
		if st.packets >= 64 {
			st.flush(s.m)
		}
	}
	b.StopTimer()
	st.flush(s.m)
}

// BenchmarkChannelDataLookup is the same path without the system call:
// what the server adds on top of the kernel's cost.
func BenchmarkChannelDataLookup(b *testing.B) {
	s, _ := newTestServer(b, func(c *Config) { c.AllowLoopbackPeers = true })
	key, _ := boundChannel(b, s, sinkPeer(b))
	frame := channelFrame(172)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		num, data, _ := parseChannelData(frame)
		a := s.lookup(key)
		a.mu.Lock()
		ch := a.chans[num]
		ok := ch != nil && a.permittedLocked(ch.peer.Addr(), 1) && a.up.take(len(data), 1, 0)
		a.mu.Unlock()
		if !ok {
			b.Fatal("no channel")
		}
	}
}
