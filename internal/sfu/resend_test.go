package sfu

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/rtcp"

	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// lateConn is a subscriber's UDP socket that loses chosen video packets
// and lets their retransmissions through only late: once armed (arm), it
// drops every copy of the next n packets of SSRC ssrc until the newest
// sequence number it has passed on is lateBy ahead of the packet's. It
// acts on the SRTP packets before the client decrypts them, as a lossy
// network and a slow NACK round trip would.
type lateConn struct {
	net.PacketConn

	mu      sync.Mutex // guards everything below
	ssrc    uint32
	n       int    // packets still to drop the first copy of
	lateBy  uint16 // how far behind the newest a retransmission must be
	held    map[uint16]bool
	newest  uint16
	dropped int // copies dropped
}

func (c *lateConn) arm(ssrc uint32, n int, lateBy uint16) {
	c.mu.Lock()
	c.ssrc, c.n, c.lateBy, c.held = ssrc, n, lateBy, map[uint16]bool{}
	c.mu.Unlock()
}

// counts returns how many sequence numbers lost their first copies and
// how many copies were dropped.
func (c *lateConn) counts() (seqs, copies int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.held), c.dropped
}

func (c *lateConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.PacketConn.ReadFrom(b)
		if err != nil || !c.drop(b[:n]) {
			return n, addr, err
		}
	}
}

// drop reports whether p, one datagram, is lost.
func (c *lateConn) drop(p []byte) bool {
	// RTP (RFC 3550 version 2), not RTCP (RFC 5761 payload types 64-95).
	if len(p) < 12 || p[0]>>6 != 2 || (p[1]&0x7f >= 64 && p[1]&0x7f <= 95) {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held == nil || binary.BigEndian.Uint32(p[8:]) != c.ssrc {
		return false
	}
	seq := binary.BigEndian.Uint16(p[2:])
	if _, ok := c.held[seq]; !ok && c.n > 0 && int16(seq-c.newest) > 0 {
		c.held[seq] = true
		c.n--
	}
	if c.held[seq] {
		if c.newest-seq < c.lateBy || int16(c.newest-seq) < 0 {
			c.dropped++
			return true
		}
		c.held[seq] = false // this copy is late enough: let it through
	}
	if int16(seq-c.newest) > 0 {
		c.newest = seq
	}
	return false
}

// TestLateRetransmissionAccepted: a pion subscriber with browser-like
// feedback (loadgen.WithFeedback) that lost 30 video packets and gets
// their retransmissions only when 100 newer packets have arrived accepts
// them: its application reads them (they repair the loss) and its NACK
// generator stops asking. A retransmission that far behind is outside
// pion's default SRTP replay window (64 packets), which drops it before
// the NACK generator or the application sees it, so the client NACKs it
// until it gives up: the load clients use Chrome's and Firefox's 1024
// (libwebrtc's SrtpSession sets libsrtp's window_size to 1024).
func TestLateRetransmissionAccepted(t *testing.T) {
	h := newHarness(t, Config{})
	pub := h.dial(loadgen.ClientConfig{Room: "late", Identity: "pub", Publish: true, VideoBitrate: 2_000_000})
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conn := &lateConn{PacketConn: pc}
	mux := ice.NewUDPMuxDefault(ice.UDPMuxParams{UDPConn: conn})
	t.Cleanup(func() { _ = mux.Close() })
	api, err := loadgen.NewAPI(false, netip.Addr{}, loadgen.WithFeedback(true), loadgen.WithUDPMux(mux))
	if err != nil {
		t.Fatal(err)
	}
	sub := h.dialWith(api, loadgen.ClientConfig{Room: "late", Identity: "sub", Subscribe: true})
	<-pub.Connected()
	video := waitVideo(t, sub, 100, anyLayer)
	ssrc := videoSSRC(sub)
	const lost = 30
	rep0, ans0 := video.Repaired(), testutilCounter(h.s.m.nacksAnswered)
	conn.arm(ssrc, lost, 100)
	t.Cleanup(func() {
		if t.Failed() {
			seqs, copies := conn.counts()
			t.Logf("%d sequence numbers lost, %d copies held back, %v resent, %d repaired", seqs, copies, testutilCounter(h.s.m.nacksAnswered)-ans0, video.Repaired()-rep0)
		}
	})
	testkit.WaitFor(t, 10*time.Second, "the retransmissions read by the subscriber", func() bool {
		seqs, _ := conn.counts()
		return seqs == lost && video.Repaired()-rep0 >= lost
	})
	// The generator stops NACKing them: the node's answers stay where
	// they are while more packets arrive.
	ans := testutilCounter(h.s.m.nacksAnswered)
	last := video.Packets()
	testkit.WaitFor(t, 5*time.Second, "200 more packets", func() bool { return video.Packets()-last >= 200 })
	if more := testutilCounter(h.s.m.nacksAnswered) - ans; more > 0 {
		t.Errorf("%v packets resent after the subscriber had them all", more)
	}
	_, copies := conn.counts()
	t.Logf("%d copies held back, %v resent, %d repaired", copies, ans-ans0, video.Repaired()-rep0)
}

// TestNACKFloodBounded mounts a NACK flood: one subscriber NACKs one
// sequence number 1,000 times as fast as it can. The node resends it at
// most once per resendGap and counts the rest in nacks_throttled_total.
func TestNACKFloodBounded(t *testing.T) {
	h, sub, video, ssrc := nackSetup(t, Config{})
	m := h.s.m
	n0, ans0, thr0, late0 := testutilCounter(m.nacks), testutilCounter(m.nacksAnswered), testutilCounter(m.nacksThrottled), video.Late()
	seq := video.LastSeq() - 5
	pairs := make([]rtcp.NackPair, 10)
	for i := range pairs {
		pairs[i] = rtcp.NackPair{PacketID: seq}
	}
	start := time.Now()
	for range 100 {
		if err := sub.PC().WriteRTCP([]rtcp.Packet{&rtcp.TransportLayerNack{SenderSSRC: 1, MediaSSRC: ssrc, Nacks: pairs}}); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, 10*time.Second, "the 1,000 NACKs at the node", func() bool {
		return testutilCounter(m.nacks)-n0 >= 1000
	})
	// At most one resend per gap over the time the flood took to arrive.
	bound := 1 + float64(time.Since(start)/resendGap)
	ans, thr := testutilCounter(m.nacksAnswered)-ans0, testutilCounter(m.nacksThrottled)-thr0
	if ans < 1 || ans > bound {
		t.Errorf("%v resends for 1,000 NACKs of one packet in %v, want 1 to %v", ans, time.Since(start).Round(time.Millisecond), bound)
	}
	if ans+thr != 1000 {
		t.Errorf("%v resent + %v throttled, want 1,000", ans, thr)
	}
	testkit.WaitFor(t, 5*time.Second, "the resends at the subscriber", func() bool {
		return video.Late()-late0 >= uint64(ans)
	})
	t.Logf("1,000 NACKs in %v: %v resent, %v throttled", time.Since(start).Round(time.Millisecond), ans, thr)
}
