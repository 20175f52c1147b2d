package turn

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/traverse-rtc/traverse/internal/turn/turntest"
)

// tcpAllocate allocates over a new TCP connection and binds channel 0x4000
// to peer.
func tcpAllocate(t *testing.T, s *Server, peer netip.AddrPort) *stunClient {
	t.Helper()
	c := newTCPSTUNClient(t, s.TCPAddr(), testUser, testPass)
	c.allocate()
	if code := errCode(c.do(stun.MethodChannelBind, channelAttr(0x4000), peerAttr(peer))); code != 0 {
		t.Fatalf("channel bind: %d", code)
	}
	return c
}

// TestStreamFraming: a TCP client's frames are found whatever the read
// boundaries: requests split into 7-byte writes, several requests and
// ChannelData frames in one write, authenticated requests back to back
// (whose integrity check must not touch the next frame in the buffer).
func TestStreamFraming(t *testing.T) {
	verifyNoLeaks(t)
	s, _ := newTestServer(t, func(c *Config) { c.AllowLoopbackPeers = true })
	peer := turntest.UDPEcho(t).LocalAddr().(*net.UDPAddr).AddrPort()
	c := tcpAllocate(t, s, peer)

	var reqs []*stun.Message
	var all []byte
	for i := 0; i < 3; i++ {
		m := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
		reqs = append(reqs, m)
		all = append(all, m.Raw...)
	}
	for off := 0; off < len(all); off += 7 {
		if _, err := c.tcp.Write(all[off:min(off+7, len(all))]); err != nil {
			t.Fatal(err)
		}
	}
	expectResponses(t, c, reqs)

	// Two authenticated requests and three ChannelData frames, one write.
	reqs = reqs[:0]
	all = all[:0]
	for i := 0; i < 2; i++ {
		m := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodCreatePermission, stun.ClassRequest), peerAttr(peer),
			stun.NewUsername(c.user), stun.NewRealm(c.realm), stun.NewNonce(c.nonce),
			stun.NewLongTermIntegrity(c.user, c.realm, c.pass), stun.Fingerprint)
		reqs = append(reqs, m)
		all = append(all, m.Raw...)
		all = appendChannelData(all, 0x4000, []byte{byte(i), 1, 2}, true)
	}
	all = appendChannelData(all, 0x4000, []byte{9, 9, 9, 9, 9}, true)
	if _, err := c.tcp.Write(all); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	oks, echoes := 0, 0
	for oks < 2 || echoes < 3 {
		f, err := c.readFrame(deadline)
		if err != nil {
			t.Fatalf("after %d responses and %d echoes: %v", oks, echoes, err)
		}
		if isChannelData(f) {
			if num, _, err := parseChannelData(f); err != nil || num != 0x4000 || len(f)%4 != 0 {
				t.Fatalf("echo frame %x", f)
			}
			echoes++
			continue
		}
		m := &stun.Message{Raw: f}
		if err := m.Decode(); err != nil || m.Type.Class != stun.ClassSuccessResponse {
			t.Fatalf("response %v: %v", m, err)
		}
		oks++
	}
	if got := testutil.ToFloat64(s.m.badStream); got != 0 {
		t.Errorf("malformed stream frames = %v", got)
	}
}

func expectResponses(t *testing.T, c *stunClient, reqs []*stun.Message) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for i, req := range reqs {
		f, err := c.readFrame(deadline)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		m := &stun.Message{Raw: f}
		if err := m.Decode(); err != nil || m.TransactionID != req.TransactionID || m.Type.Class != stun.ClassSuccessResponse {
			t.Fatalf("response %d: %v %v", i, m, err)
		}
	}
}

// TestStreamBacklog: a TCP client that stops reading while its peer
// floods gets its frames queued up to the bound, then dropped whole
// (queue_full); once it reads again every frame it gets is intact, so the
// stream stayed framed.
func TestStreamBacklog(t *testing.T) {
	verifyNoLeaks(t)
	s, _ := newTestServer(t, func(c *Config) { c.AllowLoopbackPeers = true })
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	pa := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	c := tcpAllocate(t, s, pa)
	// Tell the relay the peer's address by a first echo-less frame: the
	// channel is bound, so the peer can send at once.
	relayed := s.lookup(fiveTuple{protoTCP, netip.MustParseAddrPort(c.tcp.LocalAddr().String())}).relayed
	const n, size = 40000, 1000
	payload := make([]byte, size)
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; i < n && testutil.ToFloat64(s.m.dropQueueFull) == 0; i++ {
		payload[0], payload[1] = byte(i>>8), byte(i)
		if _, err := peer.WriteToUDPAddrPort(payload, relayed); err != nil {
			t.Fatal(err)
		}
		if i%64 == 63 {
			// Let the loop keep up, so the drops are the stream's, not the
			// relay socket's receive buffer's.
			for testutil.ToFloat64(s.m.toClientPackets)+testutil.ToFloat64(s.m.dropQueueFull) < float64(i-64) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		}
	}
	if testutil.ToFloat64(s.m.dropQueueFull) == 0 {
		t.Fatalf("no queue_full drop after %d frames to a client that does not read", n)
	}
	// Read everything that was queued: each frame whole.
	got := 0
	for {
		f, err := c.readFrame(time.Now().Add(500 * time.Millisecond))
		if err != nil {
			break
		}
		num, data, err := parseChannelData(f)
		if err != nil || num != 0x4000 || len(data) != size || !bytes.Equal(data[2:], payload[2:]) {
			t.Fatalf("frame %d after backlog: %x... (%v)", got, f[:min(len(f), 16)], err)
		}
		got++
	}
	if got == 0 {
		t.Fatal("nothing read after the backlog")
	}
	t.Logf("read %d frames whole, %v dropped as queue_full", got, testutil.ToFloat64(s.m.dropQueueFull))
}
