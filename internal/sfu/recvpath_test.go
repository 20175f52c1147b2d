package sfu

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"

	"github.com/traverse-rtc/traverse/internal/sfu/srtpseal"
	"github.com/traverse-rtc/traverse/internal/sfu/srtpseal/srtpsealtest"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

// countRecorder is a receiveRecorder that counts what it is given.
type countRecorder struct {
	n       atomic.Uint64
	lastSeq atomic.Uint32
}

func (c *countRecorder) Receive(h *rtp.Header, _ int64) {
	c.n.Add(1)
	c.lastSeq.Store(uint32(h.SequenceNumber))
}

// recvFixture is a publisher's session registered on the own receive
// path, one video layer fanned out to one own-path subscriber.
type recvFixture struct {
	r    *recvPath
	sess *recvSession
	st   *recvStream
	from netip.AddrPort
	pub  *srtp.Context // the publisher's sending context
	down *downTrack
	rec  *countRecorder
}

const recvTestSSRC = 0x5eed

func newRecvFixture(t testing.TB, profile srtp.ProtectionProfile, firstSeq uint16) *recvFixture {
	t.Helper()
	d, _, _, _ := newOwnTestDown(t, srtp.ProtectionProfileAeadAes128Gcm)
	s := d.t.r.s
	s.recv = newRecvPath(s)
	pt := d.t
	pt.addDown(d)
	key, salt := srtpsealtest.Keys(profile, 9, 0, 4, 1)
	rec := &countRecorder{}
	f := &ownPath{s: s, recorder: rec}
	pt.pub = &participant{s: s, own: f}
	from := netip.MustParseAddrPort("127.0.0.1:5004")
	f.remote.Store(&from)
	sess := &recvSession{f: f, rec: rec, key: key, salt: salt, profile: profile}
	if profile != srtp.ProtectionProfileAeadAes128Gcm && profile != srtp.ProtectionProfileAeadAes256Gcm {
		ctx, err := srtp.CreateContext(key, salt, profile, srtp.SRTPReplayProtection(srtpseal.ReplayWindow))
		if err != nil {
			t.Fatal(err)
		}
		sess.ctx = ctx
	}
	empty := []*recvStream{}
	sess.streams.Store(&empty)
	f.recv.Store(sess)
	s.recv.place(sess)
	pub, err := srtp.CreateContext(key, salt, profile)
	if err != nil {
		t.Fatal(err)
	}
	fx := &recvFixture{r: s.recv, sess: sess, from: from, pub: pub, down: d, rec: rec}
	// As the read loop does: pion delivered firstSeq, then the SSRC is
	// registered.
	if _, err := pub.EncryptRTP(nil, fx.plain(firstSeq, 100, false), nil); err != nil {
		t.Fatal(err)
	}
	fx.st = pt.registerReceive(pt.layers[0], recvTestSSRC, firstSeq)
	if fx.st == nil {
		t.Fatal("not registered")
	}
	return fx
}

// plain returns an RTP packet of the fixture's publisher.
func (fx *recvFixture) plain(seq uint16, size int, key bool) []byte {
	payload := make([]byte, size)
	if key {
		payload[0] = 0x10 // VP8: start of partition 0
		payload[1] = 0x00 // P bit clear: a keyframe
	} else {
		payload[0], payload[1] = 0x10, 0x01
	}
	pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: seq, Timestamp: uint32(seq) * 3000,
		SSRC: recvTestSSRC}, Payload: payload}
	b, _ := pkt.Marshal()
	return b
}

// sealed returns the publisher's SRTP packet for seq in a message from
// the fixture's address.
func (fx *recvFixture) sealed(t testing.TB, seq uint16, size int, key bool) udpio.Message {
	t.Helper()
	enc, err := fx.pub.EncryptRTP(nil, fx.plain(seq, size, key), nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	return udpio.Message{Buf: buf, N: copy(buf, enc), Addr: fx.from}
}

// TestRecvPath: the own receive path takes its streams' SRTP from the
// registered address, decrypts it with the client's keys (both profile
// kinds), records it for feedback and forwards it; it refuses replays and
// hands everything else to pion: another address, another SSRC, SRTCP,
// STUN, a bad tag. The session leaves the table when removed, and follows
// a pair change.
// One fixture is walked through the cases in order, each starting from the
// state (sequence numbers, replay window, counters) the last one left, which
// is part of what is tested: hence its length.
func TestRecvPath(t *testing.T) {
	for _, prof := range []srtp.ProtectionProfile{srtp.ProtectionProfileAeadAes128Gcm, srtp.ProtectionProfileAes128CmHmacSha1_80} {
		t.Run(prof.String(), func(t *testing.T) {
			fx := newRecvFixture(t, prof, 65530)
			s := fx.down.t.r.s
			now := time.Now().UnixNano()
			// Across a sequence number wrap.
			for i := range 12 {
				seq := uint16(65531 + i)
				m := fx.sealed(t, seq, 1000, i == 0)
				if !fx.r.Intercept(&m, now) {
					t.Fatalf("seq %d not taken", seq)
				}
				if got := uint16(fx.rec.lastSeq.Load()); got != seq {
					t.Fatalf("recorded seq %d, want %d", got, seq)
				}
			}
			if n := testutilCounter(fx.r.taken); n != 12 {
				t.Fatalf("%v taken, want 12", n)
			}
			if s.forwarded.Load() != 12 || s.received.Load() != 12 {
				t.Fatalf("forwarded %d, received %d, want 12", s.forwarded.Load(), s.received.Load())
			}
			// A replay is taken and dropped.
			m := fx.sealed(t, 70, 1000, false)
			dup := m
			dup.Buf = append([]byte(nil), m.Buf...)
			if !fx.r.Intercept(&m, now) || !fx.r.Intercept(&dup, now) || testutilCounter(fx.r.replays) != 1 {
				t.Fatalf("replay: %v counted", testutilCounter(fx.r.replays))
			}
			// What goes to pion.
			other := fx.sealed(t, 71, 100, false)
			other.Addr = netip.MustParseAddrPort("127.0.0.1:5005")
			unknown := fx.sealed(t, 72, 100, false)
			binary.BigEndian.PutUint32(unknown.Buf[8:], 0x1234)
			srtcp := fx.sealed(t, 73, 100, false)
			srtcp.Buf[1] = 200 // an SR's packet type
			stun := udpio.Message{Buf: make([]byte, 20), N: 20, Addr: fx.from}
			bad := fx.sealed(t, 74, 100, false)
			bad.Buf[bad.N-1] ^= 0xff
			for name, m := range map[string]udpio.Message{"other address": other, "unknown ssrc": unknown,
				"srtcp": srtcp, "stun": stun, "bad tag": bad} {
				buf := append([]byte(nil), m.Payload()...)
				if fx.r.Intercept(&m, now) {
					t.Errorf("%s: taken", name)
				}
				if string(buf) != string(m.Payload()) {
					t.Errorf("%s: changed before it went to pion", name)
				}
			}
			if testutilCounter(fx.r.errAuth)+testutilCounter(fx.r.errDecrypt) != 1 {
				t.Error("the bad tag was not counted")
			}
			// The packet with the bad tag, unaltered, still opens.
			good := fx.sealed(t, 75, 100, false)
			if !fx.r.Intercept(&good, now) {
				t.Error("a good packet after a bad one was not taken")
			}
			// A pair change moves the session; removal takes it out.
			to := netip.MustParseAddrPort("127.0.0.1:6000")
			fx.sess.f.remote.Store(&to)
			fx.r.place(fx.sess)
			m = fx.sealed(t, 76, 100, false)
			if fx.r.Intercept(&m, now) {
				t.Error("taken from the old address after a pair change")
			}
			m.Addr = to
			if !fx.r.Intercept(&m, now) {
				t.Error("not taken from the new address")
			}
			fx.st.unregister()
			m = fx.sealed(t, 77, 100, false)
			m.Addr = to
			if fx.r.Intercept(&m, now) {
				t.Error("taken after the stream was unregistered")
			}
			fx.r.remove(fx.sess)
			fx.r.place(fx.sess)
			if len(*fx.r.table.Load()) != 0 {
				t.Error("a removed session is still in the table")
			}
		})
	}
}

// TestRecvPathCache: what the own receive path opens into the layer's
// cache answers NACKs with the publisher's payload and header, for both
// profile kinds (AEAD in place, AES-CM by copy); a replay does not evict
// the packet it repeats, and a packet whose tag fails leaves its slot's
// neighbours alone.
func TestRecvPathCache(t *testing.T) {
	for _, prof := range []srtp.ProtectionProfile{srtp.ProtectionProfileAeadAes128Gcm, srtp.ProtectionProfileAes128CmHmacSha1_80} {
		t.Run(prof.String(), func(t *testing.T) {
			fx := newRecvFixture(t, prof, 1)
			cache := fx.st.l.cache
			now := time.Now().UnixNano()
			payload := func(seq uint16) []byte {
				p := make([]byte, 300+int(seq)%7)
				p[0], p[1] = 0x10, 0x01
				for i := 2; i < len(p); i++ {
					p[i] = byte(int(seq) + i)
				}
				return p
			}
			seal := func(seq uint16) udpio.Message {
				pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: seq,
					Timestamp: uint32(seq) * 3000, SSRC: recvTestSSRC}, Payload: payload(seq)}
				// An extension, as browsers send: the cache keeps the
				// header without it.
				if err := pkt.SetExtension(3, []byte{1, 2, 3}); err != nil {
					t.Fatal(err)
				}
				b, _ := pkt.Marshal()
				enc, err := fx.pub.EncryptRTP(nil, b, nil)
				if err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 1500)
				return udpio.Message{Buf: buf, N: copy(buf, enc), Addr: fx.from}
			}
			check := func(seq uint16) {
				t.Helper()
				buf := make([]byte, 1500)
				h, p, ok := cache.get(seq, buf)
				if !ok {
					t.Fatalf("seq %d not cached", seq)
				}
				if h.SequenceNumber != seq || h.Timestamp != uint32(seq)*3000 || h.Extension || string(p) != string(payload(seq)) {
					t.Fatalf("seq %d cached as seq %d ts %d ext %v, %d bytes", seq, h.SequenceNumber, h.Timestamp, h.Extension, len(p))
				}
			}
			for seq := uint16(2); seq < 2+cacheSize+10; seq++ {
				m := seal(seq)
				if !fx.r.Intercept(&m, now) {
					t.Fatalf("seq %d not taken", seq)
				}
			}
			last := uint16(2 + cacheSize + 9)
			for seq := last - cacheSize + 1; seq != last+1; seq++ {
				check(seq)
			}
			if _, _, ok := cache.get(last-cacheSize, make([]byte, 1500)); ok {
				t.Error("a packet older than the cache is still in it")
			}
			// A replay of a cached packet is dropped and keeps it.
			dup := seal(last - 3)
			if !fx.r.Intercept(&dup, now) || testutilCounter(fx.r.replays) != 1 {
				t.Fatal("replay not dropped")
			}
			check(last - 3)
			// A packet whose tag fails goes to pion; the cache still
			// answers for the others.
			bad := seal(last + 1)
			bad.Buf[bad.N-1] ^= 0xff
			if fx.r.Intercept(&bad, now) {
				t.Fatal("a bad tag was taken")
			}
			check(last)
			check(last - cacheSize + 2)
			// The good one after it is cached.
			good := seal(last + 1)
			if !fx.r.Intercept(&good, now) {
				t.Fatal("not taken")
			}
			check(last + 1)
		})
	}
}

// TestRecvPathAllocs: taking, decrypting and forwarding a packet
// allocates nothing.
func TestRecvPathAllocs(t *testing.T) {
	fx := newRecvFixture(t, srtp.ProtectionProfileAeadAes128Gcm, 1)
	now := time.Now().UnixNano()
	msgs := make([]udpio.Message, 300)
	for i := range msgs {
		msgs[i] = fx.sealed(t, uint16(2+i), 1200, i == 0)
	}
	i := 0
	if a := testing.AllocsPerRun(200, func() {
		if !fx.r.Intercept(&msgs[i], now) {
			t.Fatalf("packet %d not taken", i)
		}
		i++
	}); a != 0 {
		t.Errorf("own receive path: %v allocations per packet", a)
	}
	if fx.down.t.r.s.forwarded.Load() < 200 {
		t.Errorf("forwarded %d", fx.down.t.r.s.forwarded.Load())
	}
}

// BenchmarkRecvPath is the own receive path's cost for one 1200-byte
// packet forwarded to one subscriber: table lookup, AES-GCM open, parse,
// feedback record, the subscriber's rewrite and AES-GCM seal, queueing.
func BenchmarkRecvPath(b *testing.B) {
	fx := newRecvFixture(b, srtp.ProtectionProfileAeadAes128Gcm, 1)
	now := time.Now().UnixNano()
	const n = 4096
	msgs := make([]udpio.Message, n)
	for i := range msgs {
		msgs[i] = fx.sealed(b, uint16(2+i), 1200, i == 0)
	}
	src := make([][]byte, n)
	for i := range msgs {
		src[i] = append([]byte(nil), msgs[i].Payload()...)
	}
	out := fx.down.t.r.s.out
	out.Cork()
	b.ReportAllocs()
	i, next := 0, uint16(2+n)
	for b.Loop() {
		if i == n {
			// Seal the next n sequence numbers (sealing the same ones
			// again would only measure the replay check).
			b.StopTimer()
			for j := range msgs {
				enc, _ := fx.pub.EncryptRTP(nil, fx.plain(next, 1200, false), nil)
				msgs[j].N = copy(msgs[j].Buf, enc)
				next++
			}
			i = 0
			b.StartTimer()
		}
		fx.r.Intercept(&msgs[i], now)
		i++
		if i%256 == 0 { // one datagram per packet: well before the queue fills and flushes
			out.Discard()
		}
	}
	out.Uncork()
	if r := testutilCounter(fx.r.replays); r != 0 {
		b.Fatalf("%v replays: the benchmark measured the replay check", r)
	}
}

// FuzzRecvPath: any datagram from a registered address is taken (and
// forwarded, or dropped as a replay and counted) or handed to pion
// unaltered; never a panic.
func FuzzRecvPath(f *testing.F) {
	fx := newRecvFixture(f, srtp.ProtectionProfileAeadAes128Gcm, 1)
	for i, size := range []int{2, 3, 100, 1200} {
		m := fx.sealed(f, uint16(2+i), size, i == 0)
		f.Add(m.Payload())
	}
	f.Add([]byte{0x90, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0x5e, 0xed, 0xbe, 0xde, 0, 9})
	f.Add([]byte{0x80, 0xc8, 0, 1, 0, 0, 0, 1, 0, 0, 0x5e, 0xed})
	f.Add([]byte{0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42})
	s := fx.down.t.r.s
	now := time.Now().UnixNano()
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1500 {
			return
		}
		m := udpio.Message{Buf: make([]byte, 1500), Addr: fx.from}
		m.N = copy(m.Buf, data)
		before := append([]byte(nil), m.Payload()...)
		taken0, rep0 := testutilCounter(fx.r.taken), testutilCounter(fx.r.replays)
		out0 := s.forwarded.Load() + uint64(testutilCounter(s.m.ownDrops)+testutilCounter(s.m.badRTP))
		if fx.r.Intercept(&m, now) {
			taken := testutilCounter(fx.r.taken) - taken0
			replays := testutilCounter(fx.r.replays) - rep0
			if taken+replays != 1 {
				t.Fatalf("taken %v times, %v replays", taken, replays)
			}
			// An authenticated packet is forwarded, or counted as a bad
			// RTP packet or an own-path drop; the subscriber may also
			// skip it (a layer it waits to switch from): at most one.
			out := s.forwarded.Load() + uint64(testutilCounter(s.m.ownDrops)+testutilCounter(s.m.badRTP))
			if out-out0 > 1 {
				t.Fatalf("one packet, %d forwards and drops", out-out0)
			}
			return
		}
		if string(before) != string(m.Payload()) {
			t.Fatal("a packet handed to pion was altered")
		}
	})
}

// TestOwnReceiveRoom runs a room of three pion clients with the own
// receive path: every client decodes every other's audio and video, the
// own receive path took the publishers' packets (pion's receive path only
// saw the first few of each stream), and every packet it took went to the
// feedback recorder.
func TestOwnReceiveRoom(t *testing.T) {
	var recs []*countRecorder
	var mu = make(chan struct{}, 1)
	requireOwnPath(t)
	h := newHarness(t, Config{newRecorder: func() receiveRecorder {
		r := &countRecorder{}
		mu <- struct{}{}
		recs = append(recs, r)
		<-mu
		return r
	}})
	// The ICE-TCP subscriber stays on pion's write path: it gets the
	// intercepted packets from the layers' slow queues.
	h.meshWithTCP("r", 300_000, 100)
	if n := testutilCounter(h.s.m.recvSessions); n != 3 {
		t.Errorf("%v sessions on the own receive path, want 3", n)
	}
	taken := testutilCounter(h.s.m.recvTaken)
	viaPion := h.s.pionReceived.Load()
	t.Logf("own receive path %v packets, pion's %d", taken, viaPion)
	if taken < 10*float64(viaPion) || taken < 300 {
		t.Errorf("own receive path took %v packets, pion's %d", taken, viaPion)
	}
	mu <- struct{}{}
	var recorded uint64
	for _, r := range recs {
		recorded += r.n.Load()
	}
	<-mu
	if taken2 := testutilCounter(h.s.m.recvTaken); float64(recorded) < taken || float64(recorded) > taken2 {
		t.Errorf("recorded %d packets, taken %v..%v", recorded, taken, taken2)
	}
	for _, name := range []string{"auth", "short", "header", "decrypt"} {
		if n := testutilCounter(h.s.m.recvErrors.WithLabelValues(name)); n != 0 {
			t.Errorf("%v %s errors", n, name)
		}
	}
}
