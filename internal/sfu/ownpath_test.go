package sfu

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/sfu/batchconn"
	"github.com/traverse-rtc/traverse/internal/sfu/srtpseal/srtpsealtest"
	"github.com/traverse-rtc/traverse/internal/testkit"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

// TestDataPathConfig: the zero Config runs the own data path (what the
// traverse command runs, and what this suite runs without
// TRAVERSE_SFU_DATA_PATH); a data path that does not exist is a Config
// error; the flag values round-trip.
func TestDataPathConfig(t *testing.T) {
	c := Config{UDP: netip.MustParseAddrPort("127.0.0.1:0"), Bus: &bus.Client{}}
	if err := c.validate(); err != nil || c.DataPath != DataPathOwn || !c.DataPath.own() || !c.DataPath.batched() {
		t.Fatalf("zero Config: %v, data path %v", err, c.DataPath)
	}
	if err := (&Config{Bus: &bus.Client{}}).validate(); !errors.Is(err, ErrConfig) {
		t.Errorf("no UDP address: %v, want ErrConfig", err)
	}
	if err := (&Config{UDP: c.UDP}).validate(); !errors.Is(err, ErrConfig) {
		t.Errorf("no bus: %v, want ErrConfig", err)
	}
	c.DataPath = DataPathPionBatched + 1
	if err := c.validate(); !errors.Is(err, ErrConfig) {
		t.Errorf("data path %d: %v, want ErrConfig", c.DataPath, err)
	}
	for _, d := range []DataPath{DataPathOwn, DataPathPion, DataPathPionBatched} {
		var got DataPath = 99
		if err := got.Set(d.String()); err != nil || got != d {
			t.Errorf("Set(%q) = %v, %v", d.String(), got, err)
		}
	}
	var d DataPath
	if err := d.Set("fast"); !errors.Is(err, ErrConfig) {
		t.Errorf(`Set("fast"): %v, want ErrConfig`, err)
	}
}

// meshWithTCP joins three publishing subscribers (a, b, c, video at
// videoBitrate) and an ICE-TCP subscriber (tcp) to room, and waits until
// every client receives every other's audio and video, min packets each.
func (h *harness) meshWithTCP(room string, videoBitrate int, min uint64) {
	h.t.Helper()
	var clients []*loadgen.Client
	for _, id := range []string{"a", "b", "c"} {
		clients = append(clients, h.dial(loadgen.ClientConfig{Room: room, Identity: id, Publish: true, Subscribe: true,
			VideoBitrate: videoBitrate}))
	}
	tcp := h.dial(loadgen.ClientConfig{Room: room, Identity: "tcp", Subscribe: true, TCP: true})
	for _, c := range clients {
		testkit.WaitFor(h.t, 15*time.Second, "2 videos and 2 audios at every client", func() bool { return c.Receives(2, 2, min) })
	}
	testkit.WaitFor(h.t, 15*time.Second, "3 videos and 3 audios at the ICE-TCP client", func() bool { return tcp.Receives(3, 3, min) })
}

// TestOwnPathRoom runs a room of three on the own data path, the
// package's default: every pion client decodes every other's audio and
// video, which it can only do if the keys the node derived from the DTLS
// hooks are the ones the client's own DTLS-SRTP agreed; every session took
// the own data path, nothing was dropped, and sender reports for the
// own-path streams reach the clients. The counters prove the own receive
// and send paths carried the media: the publishers' RTP was taken by the
// socket's reader (all but the packets before a session's keys) and the
// forwarded RTP left through the node's writer (TestOwnRTCPRoom: the
// clients' RTCP, TestOwnRTCPSend: the node's).
func TestOwnPathRoom(t *testing.T) {
	requireOwnPath(t)
	h := newHarness(t, Config{})
	// The ICE-TCP subscriber has no UDP address: it stays on pion's path.
	h.meshWithTCP("f", 200_000, 30)
	if n := testutilCounter(h.s.m.ownActive); n != 3 {
		t.Errorf("%v sessions on the own data path, want 3", n)
	}
	if n := testutilCounter(h.s.m.ownFallbacks); n != 1 {
		t.Errorf("%v sessions fell back to pion's path, want 1 (the ICE-TCP one)", n)
	}
	h.s.mu.Lock()
	var parts []*participant
	for _, p := range h.s.sessions {
		parts = append(parts, p)
	}
	h.s.mu.Unlock()
	for _, p := range parts {
		if p.identity == "tcp" {
			continue
		}
		p.own.mu.Lock()
		n := len(p.own.tracks)
		p.own.mu.Unlock()
		if n != 4 {
			t.Errorf("session %s: %d own-path streams, want 4", p.id, n)
		}
	}
	if d := testutilCounter(h.s.m.ownDrops); d != 0 {
		t.Errorf("%v own-path drops", d)
	}
	if h.s.out.Stats().Writes == 0 {
		t.Error("nothing went through the node's own writer")
	}
	if own, viaPion := h.s.OwnReceivePackets(); own == 0 || own < 10*viaPion {
		t.Errorf("own receive path took %d packets, pion's %d", own, viaPion)
	}
	testkit.WaitFor(t, 5*time.Second, "sender reports for the own-path streams", func() bool {
		return testutilCounter(h.s.m.ownReports) >= 4
	})
}

// newOwnTestDown is newTestDown with an own-path writer to a local
// socket, keyed with profile.
func newOwnTestDown(t testing.TB, profile srtp.ProtectionProfile) (*downTrack, *packetCache, *net.UDPConn, *srtp.Context) {
	t.Helper()
	d, _, cache := newTestDown(t)
	uc, err := udpio.Listen(context.Background(), "udp", "127.0.0.1:0", udpio.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := d.t.r.s
	s.out = batchconn.New(uc)
	t.Cleanup(func() { s.out.Close() })
	rc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	key, salt := srtpsealtest.Keys(profile, 1, 0, 0, 0)
	f := &ownPath{s: s, key: key, salt: salt, profile: profile}
	f.active.Store(true)
	to := rc.LocalAddr().(*net.UDPAddr).AddrPort()
	f.remote.Store(&to)
	d.sub = &participant{s: s, own: f}
	dec, err := srtp.CreateContext(key, salt, profile)
	if err != nil {
		t.Fatal(err)
	}
	return d, cache, rc, dec
}

// TestOwnPathWrite: the own data path sends what a receiver with the same
// keys decrypts to the rewritten packet, answers NACKs through the same
// context, allocates nothing per packet, and drops (and counts) a packet
// too large for the MTU.
func TestOwnPathWrite(t *testing.T) {
	for _, prof := range []srtp.ProtectionProfile{srtp.ProtectionProfileAeadAes128Gcm, srtp.ProtectionProfileAes128CmHmacSha1_80} {
		t.Run(prof.String(), func(t *testing.T) {
			d, cache, rc, dec := newOwnTestDown(t, prof)
			payload := make([]byte, 1200)
			for i := range payload {
				payload[i] = byte(i)
			}
			pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 100, SequenceNumber: 65530, Timestamp: 5000, SSRC: 1},
				Payload: payload}
			if err := pkt.SetExtension(3, []byte{1, 2}); err != nil {
				t.Fatal(err)
			}
			now := time.Now().UnixNano()
			// Across a sequence number wrap: the rollover counter is ours.
			for i := range 10 {
				cache.put(pkt, nil)
				d.write(0, pkt, i == 0, now)
				got, _ := readSRTP(t, rc, dec)
				if got.SSRC != 0xabcdef || got.PayloadType != 96 || got.SequenceNumber != pkt.SequenceNumber ||
					got.Extension || len(got.Payload) != 1200 || got.Payload[1199] != payload[1199] {
					t.Fatalf("packet %d: %+v", i, got.Header)
				}
				pkt.SequenceNumber++
				pkt.Timestamp += 3000
			}
			if d.resend(pkt.SequenceNumber-3, make([]byte, 1500)) != resendSent {
				t.Fatal("resend missed the cached packet")
			}
			if got, _ := readSRTP(t, rc, dec); got.SequenceNumber != pkt.SequenceNumber-3 {
				t.Fatalf("resent %d, want %d", got.SequenceNumber, pkt.SequenceNumber-3)
			}
			if a := testing.AllocsPerRun(200, func() {
				d.write(0, pkt, false, now)
				pkt.SequenceNumber++
			}); a != 0 {
				t.Errorf("own-path write: %v allocations per packet", a)
			}
			big := &rtp.Packet{Header: pkt.Header, Payload: make([]byte, ownMTU)}
			drops := testutilCounter(d.t.r.s.m.ownDrops)
			d.write(0, big, false, now)
			if testutilCounter(d.t.r.s.m.ownDrops) != drops+1 {
				t.Fatal("an oversized packet was not dropped and counted")
			}
			var none netip.AddrPort
			d.sub.own.remote.Store(&none)
			d.write(0, pkt, false, now)
			if testutilCounter(d.t.r.s.m.ownDrops) != drops+2 {
				t.Fatal("a packet without a UDP destination was not dropped and counted")
			}
			sr, ok := d.own.report(d.ssrc, d.clock, time.Now())
			if !ok || sr.SSRC != 0xabcdef || sr.PacketCount < 11 {
				t.Fatalf("sender report %+v", sr)
			}
		})
	}
}

// BenchmarkOwnPathWrite is the per-subscriber cost of forwarding one
// 1200-byte packet on the own data path: rewrite, AES-GCM, and the queueing
// into a corked batch (the sendmmsg is outside the loop).
func BenchmarkOwnPathWrite(b *testing.B) {
	d, _, _, _ := newOwnTestDown(b, srtp.ProtectionProfileAeadAes128Gcm)
	benchOwnPathWrite(b, d)
}

// benchOwnPathWrite writes 1200-byte packets through d into a corked
// batch, emptying the queue before it fills (the sendmmsg is outside the
// loop).
func benchOwnPathWrite(b *testing.B, d *downTrack) {
	pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 100, SSRC: 1}, Payload: make([]byte, 1200)}
	now := time.Now().UnixNano()
	out := d.t.r.s.out
	out.Cork()
	d.write(0, pkt, true, now)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		pkt.SequenceNumber++
		d.write(0, pkt, false, now)
		if i++; i%256 == 0 { // well before the queue fills and flushes
			out.Discard()
		}
	}
	out.Uncork()
}

// FuzzOwnPathWrite: any RTP packet a publisher sends is either encrypted
// and sent or dropped and counted by the own data path (odd sizes, CSRC lists,
// padding, extensions), never a panic or an allocation-sized surprise.
func FuzzOwnPathWrite(f *testing.F) {
	seed := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: 1, SSRC: 7}, Payload: make([]byte, 1200)}
	b, _ := seed.Marshal()
	f.Add(b)
	seed.CSRC = []uint32{1, 2, 3}
	seed.Payload = make([]byte, 1480)
	b, _ = seed.Marshal()
	f.Add(b)
	f.Add([]byte{0x80, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 7})
	d, _, _, _ := newOwnTestDown(f, srtp.ProtectionProfileAeadAes128Gcm)
	s := d.t.r.s
	now := time.Now().UnixNano()
	f.Fuzz(func(t *testing.T, data []byte) {
		var pkt rtp.Packet
		if err := pkt.Unmarshal(data); err != nil {
			return
		}
		drops, writes := testutilCounter(s.m.ownDrops), s.out.Stats().Writes
		d.write(0, &pkt, true, now)
		if got := testutilCounter(s.m.ownDrops) - drops + float64(s.out.Stats().Writes-writes); got != 1 {
			t.Fatalf("%d-byte packet: %v sends and drops, want 1", len(data), got)
		}
	})
}
