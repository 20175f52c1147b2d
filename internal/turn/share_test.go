package turn

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestSharedRelaySockets: with a relay port range of 2, ten allocations
// still succeed, sharing the two sockets; each reaches its own peer (a
// distinct loopback IP) and gets that peer's echo back, never another's;
// a second sharer asking for a peer IP already taken on its socket gets
// 403; deleting every allocation closes the sockets.
func TestSharedRelaySockets(t *testing.T) {
	verifyNoLeaks(t)
	before := countFDs(t)
	s, _ := newTestServer(t, func(c *Config) {
		c.AllowLoopbackPeers = true
		c.RelayPortLow, c.RelayPortHigh = 41010, 41011
	})
	const n = 10
	type pair struct {
		c       *stunClient
		relayed netip.AddrPort
		peer    *net.UDPConn
	}
	pairs := make([]pair, n)
	relays := map[netip.AddrPort]int{}
	for i := range pairs {
		c := newSTUNClient(t, s.Addr(), testUser, testPass)
		relayed := c.allocate()
		relays[relayed]++
		// Peers on distinct loopback IPs: 127.0.1.1, 127.0.1.2, ...
		peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 1, byte(i+1))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { peer.Close() })
		pairs[i] = pair{c, relayed, peer}
	}
	if len(relays) != 2 {
		t.Fatalf("relayed addresses: %v, want the 2 of the range", relays)
	}
	if got := testutil.ToFloat64(s.m.quotaHits.WithLabelValues("shared")); got != n-2 {
		t.Errorf("shared placements = %v, want %d", got, n-2)
	}
	for i, p := range pairs {
		pa := p.peer.LocalAddr().(*net.UDPAddr).AddrPort()
		if code := errCode(p.c.do(stun.MethodChannelBind, channelAttr(0x4000), peerAttr(pa))); code != 0 {
			t.Fatalf("client %d: channel bind: %d", i, code)
		}
	}
	// A sharer may not permit a peer IP another sharer of its socket has.
	var other int
	for i := 1; i < n; i++ {
		if pairs[i].relayed == pairs[0].relayed {
			other = i
			break
		}
	}
	taken := pairs[0].peer.LocalAddr().(*net.UDPAddr).AddrPort()
	if code := errCode(pairs[other].c.do(stun.MethodCreatePermission, peerAttr(taken))); code != 403 {
		t.Errorf("permission for a peer IP taken on the shared socket: code %d, want 403", code)
	}
	// Each peer answers its relayed address; the answer must reach the
	// right client as ChannelData on channel 0x4000.
	buf := make([]byte, 1500)
	for i, p := range pairs {
		msg := []byte{'p', byte(i)}
		frame := appendChannelData(nil, 0x4000, msg, false)
		if _, err := p.c.c.WriteToUDPAddrPort(frame, s.Addr()); err != nil {
			t.Fatal(err)
		}
		_ = p.peer.SetReadDeadline(time.Now().Add(2 * time.Second))
		k, from, err := p.peer.ReadFromUDPAddrPort(buf)
		if err != nil || !bytes.Equal(buf[:k], msg) || from != p.relayed {
			t.Fatalf("peer %d: got %q from %v (%v), want %q from %v", i, buf[:k], from, err, msg, p.relayed)
		}
		reply := []byte{'r', byte(i)}
		if _, err := p.peer.WriteToUDPAddrPort(reply, p.relayed); err != nil {
			t.Fatal(err)
		}
		_ = p.c.c.SetReadDeadline(time.Now().Add(2 * time.Second))
		k, _, err = p.c.c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("client %d: no reply: %v", i, err)
		}
		num, data, err := parseChannelData(buf[:k])
		if err != nil || num != 0x4000 || !bytes.Equal(data, reply) {
			t.Fatalf("client %d: got %x, want ChannelData %q", i, buf[:k], reply)
		}
	}
	for _, p := range pairs {
		if code := errCode(p.c.do(stun.MethodRefresh, lifetimeSetter(0))); code != 0 {
			t.Fatalf("delete: %d", code)
		}
	}
	if s.Allocations() != 0 {
		t.Fatalf("allocations left: %d", s.Allocations())
	}
	s.mu.RLock()
	left := len(s.byFD)
	s.mu.RUnlock()
	if left != 0 {
		t.Errorf("relay sockets left: %d", left)
	}
	s.Close()
	for _, p := range pairs {
		p.c.c.Close()
		p.peer.Close()
	}
	if after := countFDs(t); after > before {
		t.Errorf("file descriptors: %d before, %d after", before, after)
	}
}
