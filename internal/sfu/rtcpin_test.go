package sfu

import (
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/srtp/v3"
	dto "github.com/prometheus/client_model/go"

	"github.com/traverse-rtc/traverse/internal/rtpfeedback"
	"github.com/traverse-rtc/traverse/internal/testkit"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

// rtcpFixture is a recvFixture whose session (the client at fx.from) also
// subscribes: fx.down is one of its down tracks, and its SRTCP is taken by
// the own RTCP path.
type rtcpFixture struct {
	*recvFixture
	p      *participant
	client *srtp.Context // the client's SRTCP sending context
	fb     *rtpfeedback.Interceptor
}

func newRTCPFixture(t testing.TB, profile srtp.ProtectionProfile) *rtcpFixture {
	t.Helper()
	fx := newRecvFixture(t, profile, 1)
	if err := fx.sess.openSRTCP(); err != nil {
		t.Fatal(err)
	}
	f := fx.sess.f
	p := &participant{s: f.s, own: f}
	f.part = p
	storeFiltered(&p.sent, nil, fx.down)
	fb, err := rtpfeedback.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fb.Close() })
	f.feedback = fb
	client, err := srtp.CreateContext(fx.sess.key, fx.sess.salt, profile)
	if err != nil {
		t.Fatal(err)
	}
	// Keyframe requests for the track end in the throttle: the test
	// publisher has no peer connection.
	fx.down.t.layers[0].lastPLI.Store(math.MaxInt64)
	return &rtcpFixture{recvFixture: fx, p: p, client: client, fb: fb}
}

// sealRTCP returns the client's SRTCP packet of pkts in a message from
// the fixture's address.
func (fx *rtcpFixture) sealRTCP(t testing.TB, pkts ...rtcp.Packet) udpio.Message {
	t.Helper()
	plain, err := rtcp.Marshal(pkts)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := fx.client.EncryptRTCP(nil, plain, nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	return udpio.Message{Buf: buf, N: copy(buf, enc), Addr: fx.from}
}

// browserRTCP returns what a browser sends most: a receiver report and a
// REMB about the fixture's down track, sealed.
func (fx *rtcpFixture) browserRTCP(t testing.TB) udpio.Message {
	return fx.sealRTCP(t, &rtcp.ReceiverReport{SSRC: 1, Reports: []rtcp.ReceptionReport{{SSRC: fx.down.ssrc}}},
		&rtcp.ReceiverEstimatedMaximumBitrate{SenderSSRC: 1, Bitrate: 1e6, SSRCs: []uint32{fx.down.ssrc}})
}

// TestRecvRTCP: the own RTCP path opens what a client's pion context
// seals (AES-CM and AES-GCM profiles) and acts on every kind of packet
// there: REMB, NACKs answered from the cache, reception reports, PLIs and
// FIRs for its down tracks only, the publisher's sender reports for the
// feedback; SDES is ignored and counted. Replays are dropped; a tampered
// or short packet goes to pion unaltered and the original still opens.
// One fixture is walked through the cases in order, each starting from the
// state (sequence numbers, replay window, counters) the last one left, which
// is part of what is tested: hence its length.
func TestRecvRTCP(t *testing.T) {
	for _, prof := range []srtp.ProtectionProfile{srtp.ProtectionProfileAes128CmHmacSha1_80, srtp.ProtectionProfileAes128CmHmacSha1_32,
		srtp.ProtectionProfileAeadAes128Gcm, srtp.ProtectionProfileAeadAes256Gcm} {
		t.Run(prof.String(), func(t *testing.T) {
			fx := newRTCPFixture(t, prof)
			s := fx.down.t.r.s
			m, c := s.m, &fx.r.rtcp
			now := time.Now().UnixNano()
			// Forward a few packets so that there is something to resend.
			for i := range 5 {
				msg := fx.sealed(t, uint16(2+i), 200, i == 0)
				if !fx.r.Intercept(&msg, now) {
					t.Fatal("RTP not taken")
				}
			}
			d := fx.down
			d.mu.Lock()
			last := d.lastSeq
			d.mu.Unlock()

			msg := fx.sealRTCP(t,
				&rtcp.ReceiverReport{SSRC: 1, Reports: []rtcp.ReceptionReport{{SSRC: d.ssrc, FractionLost: 10}, {SSRC: 0x999, FractionLost: 200}}},
				&rtcp.ReceiverEstimatedMaximumBitrate{SenderSSRC: 1, Bitrate: 123456, SSRCs: []uint32{d.ssrc}},
				&rtcp.TransportLayerNack{SenderSSRC: 1, MediaSSRC: d.ssrc, Nacks: rtcp.NackPairsFromSequenceNumbers([]uint16{last - 1, last})},
				&rtcp.TransportLayerNack{SenderSSRC: 1, MediaSSRC: 0x999, Nacks: rtcp.NackPairsFromSequenceNumbers([]uint16{last})},
				&rtcp.SourceDescription{Chunks: []rtcp.SourceDescriptionChunk{{Source: 1,
					Items: []rtcp.SourceDescriptionItem{{Type: rtcp.SDESCNAME, Text: "c"}}}}})
			dup := msg
			dup.Buf = append([]byte(nil), msg.Buf...)
			if !fx.r.Intercept(&msg, now) {
				t.Fatal("SRTCP not taken")
			}
			if got := fx.p.bwe.Load(); got != 123456 {
				t.Errorf("REMB %d, want 123456", got)
			}
			if n, a := testutilCounter(m.nacks), testutilCounter(m.nacksAnswered); n != 2 || a != 2 {
				t.Errorf("%v NACKed, %v answered; want 2 and 2 (the other SSRC's NACK is not ours)", n, a)
			}
			if n := testutilHistogramCount(t, m); n != 2 {
				t.Errorf("%d loss observations, want 2", n)
			}
			if taken, ign := testutilCounter(c.taken), testutilCounter(c.ignored); taken != 1 || ign != 1 {
				t.Errorf("taken %v, ignored %v; want 1 and 1 (the SDES)", taken, ign)
			}
			if own, viaPion := s.OwnRTCPPackets(); own != 1 || viaPion != 0 {
				t.Errorf("own %d, pion %d", own, viaPion)
			}
			// The same packet again is a replay: dropped.
			fx.p.bwe.Store(0)
			if !fx.r.Intercept(&dup, now) || testutilCounter(c.dups) != 1 || fx.p.bwe.Load() != 0 {
				t.Errorf("replay: %v counted, REMB %d", testutilCounter(c.dups), fx.p.bwe.Load())
			}
			// PLI and FIR for the down track reach its keyframe request
			// (throttled here); for another SSRC they do nothing.
			thr := testutilCounter(m.pliThrottled)
			msg = fx.sealRTCP(t, &rtcp.PictureLossIndication{SenderSSRC: 1, MediaSSRC: d.ssrc},
				&rtcp.PictureLossIndication{SenderSSRC: 1, MediaSSRC: 0x999},
				&rtcp.FullIntraRequest{SenderSSRC: 1, FIR: []rtcp.FIREntry{{SSRC: d.ssrc, SequenceNumber: 1}}})
			if !fx.r.Intercept(&msg, now) {
				t.Fatal("PLI not taken")
			}
			if n := testutilCounter(m.pliThrottled) - thr; n != 2 {
				t.Errorf("%v keyframe requests, want 2", n)
			}
			// The publisher's sender report goes to its feedback.
			msg = fx.sealRTCP(t, &rtcp.SenderReport{SSRC: recvTestSSRC, NTPTime: 1 << 40, RTPTime: 9,
				Reports: []rtcp.ReceptionReport{{SSRC: d.ssrc}}})
			if !fx.r.Intercept(&msg, now) {
				t.Fatal("SR not taken")
			}
			if n := fx.fb.Stats().SenderReport; n != 1 {
				t.Errorf("%d sender reports at the feedback, want 1", n)
			}
			// Tampered, short, and not ours: to pion, unaltered.
			good := fx.sealRTCP(t, &rtcp.ReceiverEstimatedMaximumBitrate{SenderSSRC: 1, Bitrate: 777})
			bad := good
			bad.Buf = append([]byte(nil), good.Buf...)
			// In the encrypted part: the tag fails. (A changed index is
			// checked against the replay window first, as pion does.)
			bad.Buf[9] ^= 0x01
			short := udpio.Message{Buf: []byte{0x81, 0xc9, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}, N: 14, Addr: fx.from}
			other := fx.sealRTCP(t, &rtcp.ReceiverEstimatedMaximumBitrate{SenderSSRC: 1, Bitrate: 888})
			other.Addr = netip.AddrPortFrom(fx.from.Addr(), fx.from.Port()+1)
			for name, msg := range map[string]udpio.Message{"tampered": bad, "short": short, "other address": other} {
				before := append([]byte(nil), msg.Payload()...)
				if fx.r.Intercept(&msg, now) {
					t.Errorf("%s: taken", name)
				}
				if string(before) != string(msg.Payload()) {
					t.Errorf("%s: altered", name)
				}
			}
			if a, sh := testutilCounter(c.errAuth), testutilCounter(c.errShort); a != 1 || sh != 1 {
				t.Errorf("auth errors %v, short %v; want 1 and 1", a, sh)
			}
			if !fx.r.Intercept(&good, now) || fx.p.bwe.Load() != 777 {
				t.Errorf("the untampered packet after the tampered one: REMB %d", fx.p.bwe.Load())
			}
			// Without an SRTCP context (as in the unit tests of pion's RTCP path): pion's.
			fx.sess.srtcp = nil
			msg = fx.sealRTCP(t, &rtcp.ReceiverEstimatedMaximumBitrate{SenderSSRC: 1, Bitrate: 1})
			if fx.r.Intercept(&msg, now) {
				t.Error("taken with the own RTCP path off")
			}
		})
	}
}

func testutilHistogramCount(t *testing.T, m *metrics) uint64 {
	t.Helper()
	var dm dto.Metric
	if err := m.subscriberLoss.Write(&dm); err != nil {
		t.Fatal(err)
	}
	return dm.GetHistogram().GetSampleCount()
}

// TestRecvRTCPAsyncKeyframe: a keyframe request for a publisher not on
// UDP is made off the socket's reader.
func TestRecvRTCPAsyncKeyframe(t *testing.T) {
	fx := newRTCPFixture(t, srtp.ProtectionProfileAeadAes128Gcm)
	m := fx.down.t.r.s.m
	fx.down.t.pub = &participant{s: fx.down.t.r.s} // no own data path: not known to be on UDP
	msg := fx.sealRTCP(t, &rtcp.PictureLossIndication{SenderSSRC: 1, MediaSSRC: fx.down.ssrc})
	if !fx.r.Intercept(&msg, time.Now().UnixNano()) {
		t.Fatal("PLI not taken")
	}
	testkit.WaitFor(t, 5*time.Second, "the keyframe request", func() bool { return testutilCounter(m.pliThrottled) == 1 })
	testkit.WaitFor(t, 5*time.Second, "its goroutine to end", func() bool { return fx.down.t.r.s.asyncKeyframes.Load() == 0 })
}

// TestRecvRTCPAllocs measures the own RTCP path's allocations for a
// browser's usual compound packet (receiver report, REMB): the parse
// allocates, the decryption must not add much.
func TestRecvRTCPAllocs(t *testing.T) {
	fx := newRTCPFixture(t, srtp.ProtectionProfileAeadAes128Gcm)
	now := time.Now().UnixNano()
	msgs := make([]udpio.Message, 250)
	for i := range msgs {
		msgs[i] = fx.browserRTCP(t)
	}
	i := 0
	a := testing.AllocsPerRun(200, func() {
		if !fx.r.Intercept(&msgs[i], now) {
			t.Fatalf("packet %d not taken", i)
		}
		i++
	})
	t.Logf("%v allocations per RTCP packet", a)
	if a > 12 {
		t.Errorf("%v allocations per RTCP packet", a)
	}
}

// BenchmarkRecvRTCP is the own RTCP path's cost for a receiver report
// and a REMB: AES-GCM open, replay check, parse, dispatch.
func BenchmarkRecvRTCP(b *testing.B) {
	fx := newRTCPFixture(b, srtp.ProtectionProfileAeadAes128Gcm)
	now := time.Now().UnixNano()
	const n = 4096
	msgs := make([]udpio.Message, n)
	b.ReportAllocs()
	i := n
	for b.Loop() {
		if i == n {
			// Every packet once: the next ones have new indexes.
			b.StopTimer()
			for j := range msgs {
				msgs[j] = fx.browserRTCP(b)
			}
			i = 0
			b.StartTimer()
		}
		if !fx.r.Intercept(&msgs[i], now) {
			b.Fatal("not taken")
		}
		i++
	}
}

// FuzzRecvRTCP: any RTCP-looking datagram from a registered address is
// taken (acted on, or dropped as a replay or as unparseable: counted
// once) or handed to pion unaltered; never a panic. With seal, the input
// is the plain compound packet, sealed as the client would: it
// authenticates, so it must be taken and whatever it holds dispatched.
func FuzzRecvRTCP(f *testing.F) {
	fx := newRTCPFixture(f, srtp.ProtectionProfileAeadAes128Gcm)
	d := fx.down
	for _, pkts := range [][]rtcp.Packet{
		{&rtcp.ReceiverReport{SSRC: 1, Reports: []rtcp.ReceptionReport{{SSRC: d.ssrc, FractionLost: 100}}}},
		{&rtcp.PictureLossIndication{SenderSSRC: 1, MediaSSRC: d.ssrc}},
		{&rtcp.TransportLayerNack{SenderSSRC: 1, MediaSSRC: d.ssrc, Nacks: []rtcp.NackPair{{PacketID: 1, LostPackets: 0xffff}}}},
		{&rtcp.TransportLayerCC{SenderSSRC: 1, MediaSSRC: d.ssrc, PacketStatusCount: 1, PacketChunks: []rtcp.PacketStatusChunk{
			&rtcp.RunLengthChunk{PacketStatusSymbol: rtcp.TypeTCCPacketReceivedSmallDelta, RunLength: 1}},
			RecvDeltas: []*rtcp.RecvDelta{{Type: rtcp.TypeTCCPacketReceivedSmallDelta, Delta: 250}}}},
		{&rtcp.SenderReport{SSRC: recvTestSSRC, NTPTime: 1 << 40}, &rtcp.Goodbye{Sources: []uint32{1}}},
	} {
		m := fx.sealRTCP(f, pkts...)
		f.Add(m.Payload(), false)
		plain, _ := rtcp.Marshal(pkts)
		f.Add(plain, true)
	}
	f.Add([]byte{0x81, 0xc9, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, false)
	f.Add([]byte{0x80, 0xc8, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0x5e, 0xed}, true)
	c := &fx.r.rtcp
	now := time.Now().UnixNano()
	f.Fuzz(func(t *testing.T, data []byte, seal bool) {
		if seal {
			enc, err := fx.client.EncryptRTCP(nil, data, nil)
			if err != nil {
				return
			}
			data = enc
		}
		if len(data) > 1500 {
			return
		}
		m := udpio.Message{Buf: make([]byte, 1500), Addr: fx.from}
		m.N = copy(m.Buf, data)
		before := append([]byte(nil), m.Payload()...)
		count := func() float64 {
			return testutilCounter(c.taken) + testutilCounter(c.dups) + testutilCounter(c.errParse)
		}
		n0 := count()
		rtcpLike := len(data) >= 12 && data[0] >= 128 && data[0] <= 191 && data[1]&0x7f >= 64 && data[1]&0x7f <= 95
		if fx.r.Intercept(&m, now) {
			if n := count() - n0; rtcpLike && n != 1 {
				t.Fatalf("taken, counted %v times", n)
			}
			return
		}
		if seal && rtcpLike {
			t.Fatal("an authenticated packet was handed to pion")
		}
		if string(before) != string(m.Payload()) {
			t.Fatal("a packet handed to pion was altered")
		}
	})
}

// TestOwnRTCPRoom: on the own data path, a pion subscriber's RTCP is
// acted on without pion's RTCP receive path (which delivers nothing to the
// node's readers): its NACKs are answered from the cache and resent through the own
// data path (the subscriber decrypts the copies), its PLIs reach
// the publisher, its REMB sets its estimate. (TestPublisherGetsFeedback
// checks that the publisher's sender reports reach the feedback.)
func TestOwnRTCPRoom(t *testing.T) {
	requireOwnPath(t)
	h, sub, video, ssrc := nackSetup(t, Config{PLIInterval: 50 * time.Millisecond})
	m := h.s.m
	nackRecent(t, h, sub, video, ssrc)
	fwd0 := testutilCounter(m.pliForwarded)
	testkit.WaitFor(t, 5*time.Second, "a PLI forwarded to the publisher", func() bool {
		if err := sub.PC().WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{SenderSSRC: 1, MediaSSRC: ssrc}}); err != nil {
			t.Fatal(err)
		}
		return testutilCounter(m.pliForwarded) > fwd0
	})
	sub.SetREMB(432_000)
	testkit.WaitFor(t, 5*time.Second, "the subscriber's REMB", func() bool {
		st, _ := h.s.Subscriber("sub")
		return st.REMB == 432_000
	})
	if n := testutilCounter(m.ownActive); n != 2 {
		t.Errorf("%v sessions on the own data path, want 2", n)
	}
	own, viaPion := h.s.OwnRTCPPackets()
	t.Logf("own RTCP path %d packets (%v ignored parts), pion's %d", own, testutilCounter(m.rtcpIgnored), viaPion)
	if own == 0 || viaPion != 0 {
		t.Errorf("own RTCP path took %d packets, pion's readers got %d", own, viaPion)
	}
	for _, name := range []string{"auth", "short", "decrypt", "parse", "replay"} {
		if n := testutilCounter(m.rtcpErrors.WithLabelValues(name)); n != 0 {
			t.Errorf("%v %s errors", n, name)
		}
	}
}
