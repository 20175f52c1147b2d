package gcc

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/pion/rtcp"
)

// bweSim drives a SendSide with a simulated bottleneck: packets of 1200
// bytes sent at rate bit/s through a link of capacity bit/s with a
// drop-tail queue of queueMs, random loss, and a transport-cc feedback
// every 100 ms of receive time, marshalled and parsed by pion/rtcp as the
// subscriber's would be, arriving 10 ms later.
type bweSim struct {
	t        *testing.T
	s        *SendSide
	rng      *rand.Rand
	now      int64 // ns, simulated
	rate     float64
	capacity float64
	queueMs  float64
	loss     float64

	linkFree int64 // ns when the link has sent everything queued
	sent     []simPkt
	reported int // packets already in a feedback
	nextFb   int64
	fbCount  uint8
	fbs      []*rtcp.TransportLayerCC // every feedback sent, for the dedup test
}

type simPkt struct {
	seq     uint16
	arrival int64 // ns; -1 lost
}

const simOneWay = 10 * time.Millisecond

func newBWESim(t *testing.T) *bweSim {
	start := int64(1_000_000_000_000)
	return &bweSim{t: t, s: New(start), rng: rand.New(rand.NewPCG(1, 2)), now: start,
		rate: 1e6, capacity: 5e6, queueMs: 300, nextFb: start + int64(100*time.Millisecond)}
}

// run simulates d, then returns the estimate.
func (b *bweSim) run(d time.Duration) uint64 {
	end := b.now + int64(d)
	const size = 1200
	for b.now < end {
		gap := int64(float64(size*8) / b.rate * 1e9)
		// Feedbacks due before the next packet.
		for b.nextFb <= b.now+gap {
			b.feedback(b.nextFb)
			b.nextFb += int64(100 * time.Millisecond)
		}
		b.now += gap
		seq := b.s.Next()
		b.s.Record(seq, size, b.now)
		p := simPkt{seq: seq, arrival: -1}
		start := max(b.now, b.linkFree)
		queued := float64(start-b.now) / 1e6
		if queued <= b.queueMs && b.rng.Float64() >= b.loss {
			b.linkFree = start + int64(float64(size*8)/b.capacity*1e9)
			p.arrival = b.linkFree + int64(simOneWay)
		}
		b.sent = append(b.sent, p)
	}
	return b.s.Estimate(b.now)
}

// feedback reports, at receive time at, every packet not reported yet up
// to the first one still in flight.
func (b *bweSim) feedback(at int64) {
	var pkts []simPkt
	for _, p := range b.sent[b.reported:] {
		if p.arrival > at {
			break
		}
		pkts = append(pkts, p)
	}
	if len(pkts) == 0 {
		return
	}
	// Trailing losses wait for a later arrival, as a receiver's would.
	for len(pkts) > 0 && pkts[len(pkts)-1].arrival < 0 {
		pkts = pkts[:len(pkts)-1]
	}
	if len(pkts) == 0 {
		return
	}
	b.reported += len(pkts)
	fb := buildFeedback(pkts, b.fbCount)
	b.fbCount++
	raw, err := fb.Marshal()
	if err != nil {
		b.t.Fatal(err)
	}
	var parsed rtcp.TransportLayerCC
	if err := parsed.Unmarshal(raw); err != nil {
		b.t.Fatal(err)
	}
	b.fbs = append(b.fbs, &parsed)
	if ok, _ := b.s.Feedback(&parsed, at+int64(simOneWay)); !ok {
		b.t.Fatalf("feedback refused: %+v", parsed)
	}
}

// buildFeedback makes a transport-cc feedback of consecutive packets with
// two-bit status vectors.
func buildFeedback(pkts []simPkt, count uint8) *rtcp.TransportLayerCC {
	fb := &rtcp.TransportLayerCC{SenderSSRC: 1, MediaSSRC: 2, BaseSequenceNumber: pkts[0].seq,
		PacketStatusCount: uint16(len(pkts)), FbPktCount: count}
	var ref int64 = -1
	var last int64
	var syms []uint16
	for _, p := range pkts {
		if p.arrival < 0 {
			syms = append(syms, rtcp.TypeTCCPacketNotReceived)
			continue
		}
		us := p.arrival / 1000
		if ref < 0 {
			ref = us / 64_000
			fb.ReferenceTime = uint32(ref) & 0xffffff
			last = ref * 64_000
		}
		d := (us - last) / 250 * 250
		last += d
		typ := rtcp.TypeTCCPacketReceivedSmallDelta
		if d < 0 || d > 255*250 {
			typ = rtcp.TypeTCCPacketReceivedLargeDelta
		}
		syms = append(syms, typ)
		fb.RecvDeltas = append(fb.RecvDeltas, &rtcp.RecvDelta{Type: typ, Delta: d})
	}
	for i := 0; i < len(syms); i += 7 {
		list := append([]uint16(nil), syms[i:min(i+7, len(syms))]...)
		for len(list) < 7 {
			list = append(list, rtcp.TypeTCCPacketNotReceived)
		}
		fb.PacketChunks = append(fb.PacketChunks, &rtcp.StatusVectorChunk{Type: rtcp.TypeTCCStatusVectorChunk,
			SymbolSize: rtcp.TypeTCCSymbolSizeTwoBit, SymbolList: list})
	}
	n := 4 + 16 + 2*len(fb.PacketChunks)
	for _, d := range fb.RecvDeltas {
		n += int(d.Type) // small 1 byte, large 2
	}
	fb.Header = rtcp.Header{Padding: fb.MarshalSize() != n, Count: rtcp.FormatTCC,
		Type: rtcp.TypeTransportSpecificFeedback, Length: uint16(fb.MarshalSize()/4 - 1)}
	return fb
}

func TestBWESteady(t *testing.T) {
	for _, rate := range []float64{300e3, 1e6, 3e6} {
		b := newBWESim(t)
		b.rate, b.capacity = rate, 2*rate+1e6
		est := b.run(10 * time.Second)
		t.Logf("send %.0f kbit/s over %.0f kbit/s: estimate %d kbit/s", rate/1e3, b.capacity/1e3, est/1000)
		if float64(est) < rate {
			t.Errorf("steady %.0f kbit/s: estimate %d, want at least the rate", rate, est)
		}
		if float64(est) > 2.1*rate+bweCapExtra {
			t.Errorf("steady %.0f kbit/s: estimate %d above the cap", rate, est)
		}
	}
}

// TestBWEQueue: the capacity drops below the send rate; the queue builds
// (delays grow, then the drop-tail queue drops) and the estimate must fall
// under the new capacity within 2 s, then come back when it is lifted.
func TestBWEQueue(t *testing.T) {
	b := newBWESim(t)
	b.rate, b.capacity = 1e6, 5e6
	if est := b.run(5 * time.Second); est < 1e6 {
		t.Fatalf("before the cap: estimate %d", est)
	}
	b.capacity = 500e3
	var est uint64
	var took time.Duration
	for took = 0; took < 2*time.Second; took += 100 * time.Millisecond {
		if est = b.run(100 * time.Millisecond); est < 500e3 {
			break
		}
	}
	t.Logf("capacity 1 Mbit/s -> 500 kbit/s: estimate %d kbit/s after %v", est/1000, took)
	if est >= 500e3 {
		t.Fatalf("estimate %d after 2 s over a 500 kbit/s link", est)
	}
	// Held under the cap while it lasts.
	if est = b.run(5 * time.Second); est > 600e3 {
		t.Errorf("estimate %d 5 s later, link 500 kbit/s", est)
	}
	b.capacity = 5e6
	// Overuses that repeated while the sender did not adapt may have
	// doubled the hold up to 16 s.
	for took = 0; took < 25*time.Second; took += 100 * time.Millisecond {
		if est = b.run(100 * time.Millisecond); est >= 1e6 {
			break
		}
	}
	t.Logf("capacity back to 5 Mbit/s: estimate %d kbit/s after %v", est/1000, took)
	if est < 1e6 {
		t.Errorf("estimate %d 25 s after the cap was lifted, sending 1 Mbit/s", est)
	}
}

// TestBWELoss: random loss of 20 % (no queue) brings the estimate under
// the rate; clean delivery brings it back.
func TestBWELoss(t *testing.T) {
	b := newBWESim(t)
	b.rate, b.capacity = 1e6, 10e6
	before := b.run(3 * time.Second)
	b.loss = 0.2
	est := b.run(3 * time.Second)
	t.Logf("20 %% loss: estimate %d -> %d kbit/s", before/1000, est/1000)
	if est >= 800e3 {
		t.Errorf("estimate %d after 3 s of 20 %% loss at 1 Mbit/s", est)
	}
	b.loss = 0.01
	for took := time.Duration(0); took < 15*time.Second; took += 100 * time.Millisecond {
		if est = b.run(100 * time.Millisecond); est >= 1e6 {
			t.Logf("1 %% loss: back to %d kbit/s after %v", est/1000, took)
			return
		}
	}
	t.Errorf("estimate %d 15 s after the loss ended", est)
}

// TestBWEFeedbackOnce: the same feedback seen again (through a second
// sender's RTCP, or repeated) tells nothing new and leaves the estimate.
func TestBWEFeedbackOnce(t *testing.T) {
	b := newBWESim(t)
	b.run(3 * time.Second)
	est := b.s.Estimate(b.now)
	for _, fb := range b.fbs[len(b.fbs)-5:] {
		ok, news := b.s.Feedback(fb, b.now)
		if !ok || news {
			t.Errorf("repeated feedback: ok %v news %v, want ok and no news", ok, news)
		}
	}
	if got := b.s.Estimate(b.now); got != est {
		t.Errorf("estimate moved on repeated feedback: %d -> %d", est, got)
	}
	if ok, _ := b.s.Feedback(&rtcp.TransportLayerCC{PacketStatusCount: 3, PacketChunks: []rtcp.PacketStatusChunk{
		&rtcp.RunLengthChunk{PacketStatusSymbol: rtcp.TypeTCCPacketReceivedSmallDelta, RunLength: 3}}}, b.now); ok {
		t.Error("statuses without deltas accepted")
	}
}

// TestBWEUnknownUntilMeasured: no estimate before feedback, and none once
// feedback stopped for bweStale.
func TestBWEUnknownUntilMeasured(t *testing.T) {
	s := New(1)
	if e := s.Estimate(2); e != 0 {
		t.Fatalf("estimate %d before any feedback", e)
	}
	b := newBWESim(t)
	b.run(2 * time.Second)
	if e := b.s.Estimate(b.now); e == 0 {
		t.Fatal("no estimate after 2 s of feedback")
	}
	if e := b.s.Estimate(b.now + int64(bweStale+time.Second)); e != 0 {
		t.Fatalf("estimate %d with no feedback for %v", e, bweStale)
	}
}

// FuzzTWCCFeedback: any transport-cc feedback, as bytes pion parses or as
// arbitrary chunk and delta contents, is applied or refused without a
// panic, and the estimate stays 0 or within [bweMin, bweMax].
func FuzzTWCCFeedback(f *testing.F) {
	pkts := []simPkt{{seq: 0, arrival: 1e9}, {seq: 1, arrival: -1}, {seq: 2, arrival: 1e9 + 3e6}, {seq: 3, arrival: 1e9 + 1e8}}
	raw, _ := buildFeedback(pkts, 0).Marshal()
	f.Add(raw)
	f.Add([]byte{0x8f, 0xcd, 0, 5, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 1, 0, 0x20, 4, 1, 2, 3, 4})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		s := New(1)
		now := int64(1e9)
		for i := range 600 {
			s.Record(s.Next(), 1200, now+int64(i)*1e6)
		}
		check := func() {
			if e := s.Estimate(now + 1e9); e != 0 && (e < bweMin || e > bweMax) {
				t.Fatalf("estimate %d out of [%d, %d]", e, bweMin, bweMax)
			}
		}
		var fb rtcp.TransportLayerCC
		if fb.Unmarshal(data) == nil {
			s.Feedback(&fb, now+1e9)
			check()
		}
		// The same bytes as arbitrary contents.
		if len(data) < 8 {
			return
		}
		arb := &rtcp.TransportLayerCC{BaseSequenceNumber: uint16(data[0])<<8 | uint16(data[1]),
			PacketStatusCount: uint16(data[2])<<8 | uint16(data[3]), ReferenceTime: uint32(data[4])<<16 | uint32(data[5])<<8 | uint32(data[6])}
		for i := 7; i+2 < len(data); i += 3 {
			switch data[i] % 5 {
			case 0:
				arb.PacketChunks = append(arb.PacketChunks, &rtcp.RunLengthChunk{PacketStatusSymbol: uint16(data[i+1] % 5), RunLength: uint16(data[i+2])})
			case 1:
				syms := make([]uint16, data[i+1]%16)
				for j := range syms {
					syms[j] = uint16(data[i+2]>>(j%8)) % 4
				}
				arb.PacketChunks = append(arb.PacketChunks, &rtcp.StatusVectorChunk{SymbolSize: uint16(data[i+1] >> 7), SymbolList: syms})
			case 2:
				arb.RecvDeltas = append(arb.RecvDeltas, &rtcp.RecvDelta{Type: 1, Delta: int64(int16(uint16(data[i+1])<<8|uint16(data[i+2]))) * 250})
			case 3:
				arb.RecvDeltas = append(arb.RecvDeltas, nil)
			case 4:
				arb.PacketChunks = append(arb.PacketChunks, nil)
			}
		}
		for range 3 {
			s.Feedback(arb, now+2e9)
			check()
		}
	})
}
