package rtpfeedback

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"go.uber.org/goleak"

	"github.com/traverse-rtc/traverse/internal/rtpfeedback/rtpfeedbacktest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const tccID = 5

func videoInfo(ssrc uint32) *interceptor.StreamInfo {
	return &interceptor.StreamInfo{
		SSRC: ssrc, ClockRate: 90000, MimeType: "video/VP8",
		RTCPFeedback:        []interceptor.RTCPFeedback{{Type: "nack"}, {Type: "nack", Parameter: "pli"}, {Type: "transport-cc"}},
		RTPHeaderExtensions: []interceptor.RTPHeaderExtension{{URI: sdp.TransportCCURI, ID: tccID}},
	}
}

func audioInfo(ssrc uint32) *interceptor.StreamInfo {
	return &interceptor.StreamInfo{
		SSRC: ssrc, ClockRate: 48000, MimeType: "audio/opus",
		RTCPFeedback:        []interceptor.RTCPFeedback{{Type: "transport-cc"}},
		RTPHeaderExtensions: []interceptor.RTPHeaderExtension{{URI: sdp.TransportCCURI, ID: tccID}},
	}
}

// header returns an RTP header; tseq >= 0 adds a transport-cc extension.
func header(ssrc uint32, seq uint16, ts uint32, tseq int) *rtp.Header {
	h := &rtp.Header{Version: 2, SSRC: ssrc, SequenceNumber: seq, Timestamp: ts, PayloadType: 96}
	if tseq >= 0 {
		b, _ := (&rtp.TransportCCExtension{TransportSequence: uint16(tseq)}).Marshal()
		_ = h.SetExtension(tccID, b)
	}
	return h
}

func newTest(t *testing.T, opts ...Option) *Interceptor {
	t.Helper()
	i, err := New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = i.Close() })
	return i
}

// nackSeqs flattens NACK packets for ssrc into sequence numbers.
func nackSeqs(pkts []rtcp.Packet, ssrc uint32) []uint16 {
	var out []uint16
	for _, p := range pkts {
		n, ok := p.(*rtcp.TransportLayerNack)
		if !ok || n.MediaSSRC != ssrc {
			continue
		}
		for _, pair := range n.Nacks {
			out = append(out, pair.PacketList()...)
		}
	}
	return out
}

func TestNACK(t *testing.T) {
	const ssrc = 0x1111
	seqs := func(a, b uint16, skip ...uint16) []uint16 {
		var out []uint16
		for s := a; s != b+1; s++ {
			if !slices.Contains(skip, s) {
				out = append(out, s)
			}
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		opts     []Option
		recv     []uint16
		ticks    int      // NACK rounds before the checked one
		want     []uint16 // NACKed in the checked round
		fillWant []uint16 // NACKed after late arrivals of want
	}{
		{name: "no loss", recv: seqs(1, 50), want: nil},
		{name: "one gap", recv: seqs(1, 50, 20), want: []uint16{20}},
		{name: "gaps", recv: seqs(1, 50, 3, 4, 5, 40), want: []uint16{3, 4, 5, 40}},
		{name: "across wrap", recv: seqs(65530, 5, 65535, 0, 2), want: []uint16{65535, 0, 2}},
		{name: "reordered then filled", recv: append(seqs(1, 10, 7), 7), want: nil},
		{name: "skip newest", opts: []Option{NACKSkipLastN(3)}, recv: seqs(1, 20, 10, 18), want: []uint16{10}},
		{name: "retry limit reached", opts: []Option{NACKMaxPerPacket(2)}, recv: seqs(1, 30, 15), ticks: 2, want: nil},
		{name: "retry limit not reached", opts: []Option{NACKMaxPerPacket(2)}, recv: seqs(1, 30, 15), ticks: 1, want: []uint16{15}},
		{name: "unlimited retries (pion's default)", recv: seqs(1, 30, 15), ticks: 5, want: []uint16{15}},
		// A jump past the 512-packet window gives up on what fell out
		// of it; slots 89..98 alias 601..610 (pion's receive log does
		// the same).
		{name: "older than the window", recv: append(seqs(1, 10, 5), seqs(600, 610)...), want: seqs(99, 599)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			i := newTest(t, tc.opts...)
			i.AddStream(videoInfo(ssrc))
			i.AddStream(audioInfo(ssrc + 1))
			at := int64(1e9)
			for _, s := range tc.recv {
				i.Receive(header(ssrc, s, uint32(s)*3000, -1), at)
				i.Receive(header(ssrc+1, s, uint32(s)*960, -1), at) // audio: never NACKed
				at += int64(time.Millisecond)
			}
			for range tc.ticks {
				i.buildNACKs()
			}
			pkts := i.buildNACKs()
			if got := nackSeqs(pkts, ssrc); !slices.Equal(got, tc.want) {
				t.Fatalf("NACKed %v, want %v", got, tc.want)
			}
			if got := nackSeqs(pkts, ssrc+1); len(got) > 0 {
				t.Fatalf("audio NACKed %v", got)
			}
			for _, p := range pkts {
				if n := p.(*rtcp.TransportLayerNack); n.SenderSSRC != i.senderSSRC {
					t.Errorf("sender SSRC %x, want %x", n.SenderSSRC, i.senderSSRC)
				}
			}
			// The gap fills: nothing more to NACK.
			for _, s := range tc.want {
				i.Receive(header(ssrc, s, uint32(s)*3000, -1), at)
			}
			if got := nackSeqs(i.buildNACKs(), ssrc); len(got) > 0 && tc.name != "skip newest" {
				t.Fatalf("after the gap filled NACKed %v", got)
			}
		})
	}
}

func TestReceiverReportLoss(t *testing.T) {
	const ssrc = 0x2222
	type round struct {
		recv                    []uint16
		fraction                uint8
		lost                    uint32
		extHighest              uint32
		wantNoReportOfTheStream bool
	}
	for _, tc := range []struct {
		name   string
		rounds []round
	}{
		{name: "no loss", rounds: []round{{recv: []uint16{1, 2, 3, 4}, fraction: 0, lost: 0, extHighest: 4}}},
		{name: "two of ten lost", rounds: []round{{recv: []uint16{1, 2, 5, 6, 7, 8, 9, 10}, fraction: 2 * 256 / 10, lost: 2, extHighest: 10}}},
		{name: "late arrival recovers", rounds: []round{
			{recv: []uint16{1, 2, 4, 5}, fraction: 256 / 5, lost: 1, extHighest: 5},
			{recv: []uint16{3, 6, 7, 8, 9, 10}, fraction: 0, lost: 0, extHighest: 10},
		}},
		{name: "duplicates not counted", rounds: []round{{recv: []uint16{1, 2, 2, 3, 3, 3, 5}, fraction: 256 / 5, lost: 1, extHighest: 5}}},
		{name: "extended across wrap", rounds: []round{
			{recv: []uint16{65533, 65534, 65535}, extHighest: 65535},
			{recv: []uint16{0, 1, 3}, fraction: 256 / 4, lost: 1, extHighest: 1<<16 + 3},
		}},
		{name: "cumulative over rounds", rounds: []round{
			{recv: []uint16{10, 12}, fraction: 256 / 3, lost: 1, extHighest: 12},
			{recv: []uint16{14, 16, 17}, fraction: 2 * 256 / 5, lost: 3, extHighest: 17},
			{recv: []uint16{18, 19}, fraction: 0, lost: 3, extHighest: 19},
		}},
		{name: "sender restart after a large jump", rounds: []round{
			{recv: []uint16{100, 101, 102}, extHighest: 102},
			{recv: []uint16{40000, 40001, 40002}, extHighest: 40002}, // 40000 ignored, 40001 restarts
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			i := newTest(t)
			i.AddStream(videoInfo(ssrc))
			at := int64(1e9)
			for n, r := range tc.rounds {
				for _, s := range r.recv {
					i.Receive(header(ssrc, s, 0, -1), at)
					at += int64(time.Millisecond)
				}
				pkts := i.buildReports(at)
				if len(pkts) != 1 {
					t.Fatalf("round %d: %d RR packets, want 1", n, len(pkts))
				}
				rr := pkts[0].(*rtcp.ReceiverReport)
				if rr.SSRC != i.senderSSRC || len(rr.Reports) != 1 || rr.Reports[0].SSRC != ssrc {
					t.Fatalf("round %d: RR %+v", n, rr)
				}
				b := rr.Reports[0]
				if b.FractionLost != r.fraction || b.TotalLost != r.lost || b.LastSequenceNumber != r.extHighest {
					t.Errorf("round %d: fraction %d lost %d ext %d, want %d %d %d", n,
						b.FractionLost, b.TotalLost, b.LastSequenceNumber, r.fraction, r.lost, r.extHighest)
				}
				if _, err := rr.Marshal(); err != nil {
					t.Errorf("round %d: marshal: %v", n, err)
				}
			}
		})
	}
}

func TestReceiverReportStalePacket(t *testing.T) {
	// A packet far behind the highest (past RFC 3550 A.1's MAX_MISORDER)
	// is neither counted nor a restart unless the next one follows it;
	// every reordered packet the RFC counts is within the 512-packet
	// duplicate window, so loss never goes negative through repeats.
	i := newTest(t)
	i.AddStream(videoInfo(1))
	at := int64(1e9)
	for s := uint16(0); s < 600; s++ {
		i.Receive(header(1, s, 0, -1), at)
	}
	i.Receive(header(1, 3, 0, -1), at)
	i.Receive(header(1, 500, 0, -1), at) // reordered, a duplicate
	b := i.buildReports(at)[0].(*rtcp.ReceiverReport).Reports[0]
	if b.TotalLost != 0 || b.LastSequenceNumber != 599 || b.FractionLost != 0 {
		t.Errorf("lost %d highest %d fraction %d, want 0 599 0", b.TotalLost, b.LastSequenceNumber, b.FractionLost)
	}
}

func TestJitter(t *testing.T) {
	// RFC 3550 A.8 by hand: 90 kHz, a frame every 3000 units (33.33 ms).
	const clock = 90000
	for _, tc := range []struct {
		name    string
		delays  []int64 // extra network delay of packet k, in clock units
		sameTS  bool    // two packets per frame
		wantJit uint32
	}{
		{name: "steady", delays: []int64{0, 0, 0, 0, 0, 0}, wantJit: 0},
		{name: "one late", delays: []int64{0, 0, 90, 0, 0}, wantJit: 0},
		{name: "alternating", delays: []int64{0, 180, 0, 180, 0, 180, 0, 180}, wantJit: 0},
		{name: "packets of one frame ignored", delays: []int64{0, 0, 0, 0}, sameTS: true, wantJit: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			i := newTest(t)
			info := videoInfo(7)
			info.ClockRate = clock
			i.AddStream(info)
			// The reference: J += (|D| - J)/16 in floating point.
			var want float64
			base := int64(5e9)
			seq := uint16(100)
			for k, d := range tc.delays {
				ts := uint32(k * 3000)
				arr := base + (int64(k)*3000+d)*int64(time.Second)/clock
				i.Receive(header(7, seq, ts, -1), arr)
				seq++
				if tc.sameTS {
					i.Receive(header(7, seq, ts, -1), arr+int64(5*time.Millisecond)+int64(k)*int64(time.Millisecond))
					seq++
				}
				if k > 0 {
					D := float64(d - tc.delays[k-1])
					if D < 0 {
						D = -D
					}
					want += (D - want) / 16
				}
			}
			got := i.buildReports(base + int64(time.Second))[0].(*rtcp.ReceiverReport).Reports[0].Jitter
			if diff := float64(got) - want; diff > 1 || diff < -1 {
				t.Errorf("jitter %d, want %.2f (RFC 3550 A.8)", got, want)
			}
		})
	}
}

func TestLSRAndDLSR(t *testing.T) {
	i := newTest(t)
	i.AddStream(videoInfo(9))
	i.AddStream(audioInfo(10))
	at := int64(1e9)
	i.Receive(header(9, 1, 0, -1), at)
	i.Receive(header(10, 1, 0, -1), at)
	if b := i.buildReports(at)[0].(*rtcp.ReceiverReport).Reports[0]; b.LastSenderReport != 0 || b.Delay != 0 {
		t.Fatalf("LSR/DLSR before any SR: %d/%d", b.LastSenderReport, b.Delay)
	}
	sr := &rtcp.SenderReport{SSRC: 9, NTPTime: 0xAABBCCDD_EEFF0011, RTPTime: 1, PacketCount: 1, OctetCount: 1}
	sdes := rtcp.NewCNAMESourceDescription(9, "x")
	raw, err := rtcp.Marshal([]rtcp.Packet{&rtcp.ReceiverReport{SSRC: 3}, sr, sdes})
	if err != nil {
		t.Fatal(err)
	}
	srAt := at + int64(time.Second)
	i.ReceiveRTCP(raw, srAt)
	rr := i.buildReports(srAt + int64(1500*time.Millisecond))[0].(*rtcp.ReceiverReport)
	for _, b := range rr.Reports {
		switch b.SSRC {
		case 9:
			if b.LastSenderReport != 0xCCDDEEFF {
				t.Errorf("LSR %#x, want 0xCCDDEEFF", b.LastSenderReport)
			}
			if b.Delay != 65536*3/2 {
				t.Errorf("DLSR %d, want %d (1.5 s)", b.Delay, 65536*3/2)
			}
		case 10:
			if b.LastSenderReport != 0 || b.Delay != 0 {
				t.Errorf("audio LSR/DLSR %d/%d without an SR of its own", b.LastSenderReport, b.Delay)
			}
		}
	}
	if got := i.Stats().SenderReport; got != 1 {
		t.Errorf("%d sender reports seen, want 1", got)
	}
}

func TestReportsOnlyActiveStreamsAndSplit(t *testing.T) {
	i := newTest(t)
	at := int64(1e9)
	for s := uint32(1); s <= 40; s++ {
		i.AddStream(videoInfo(s))
		i.Receive(header(s, 1, 0, -1), at)
	}
	i.AddStream(videoInfo(99)) // bound, nothing received: no block
	pkts := i.buildReports(at)
	n := 0
	for _, p := range pkts {
		n += len(p.(*rtcp.ReceiverReport).Reports)
	}
	if len(pkts) != 2 || n != 40 {
		t.Fatalf("%d RRs with %d blocks, want 2 with 40", len(pkts), n)
	}
	if pkts := i.buildReports(at + int64(activeFor) + 1); len(pkts) != 0 {
		t.Fatalf("%d RRs for streams silent for over %v", len(pkts), activeFor)
	}
}

// decodeTWCC returns the transport sequence numbers a feedback packet
// reports received, and their arrival times in microseconds.
func decodeTWCC(t *testing.T, p *rtcp.TransportLayerCC) map[uint16]int64 {
	t.Helper()
	out := map[uint16]int64{}
	seq := p.BaseSequenceNumber
	ref := int64(p.ReferenceTime) * 64000
	d := 0
	for _, s := range rtpfeedbacktest.Statuses(p) {
		if s == rtcp.TypeTCCPacketReceivedSmallDelta || s == rtcp.TypeTCCPacketReceivedLargeDelta {
			ref += p.RecvDeltas[d].Delta
			d++
			out[seq] = ref
		}
		seq++
	}
	return out
}

func TestTWCCFeedback(t *testing.T) {
	i := newTest(t)
	i.AddStream(videoInfo(1))
	i.AddStream(audioInfo(2))
	want := map[uint16]int64{} // transport seq -> arrival, us since i.start
	at := i.start + int64(3*time.Millisecond)
	tseq := 65500 // wraps
	for k := range 100 {
		ts := tseq + k
		at += int64(time.Duration(k%7) * 700 * time.Microsecond)
		if k%10 == 3 {
			continue // lost
		}
		ssrc := uint32(1 + k%2)
		i.Receive(header(ssrc, uint16(k), 0, ts), at)
		want[uint16(ts)] = (at - i.start) / 1000
	}
	// Packets of an SSRC no stream declares still count for TWCC (the
	// peer connection's extension id applies): a probe on an RTX SSRC.
	i.Receive(header(77, 1, 0, tseq+100), at+1000)
	want[uint16(tseq+100)] = (at + 1000 - i.start) / 1000
	pkts := i.buildTWCC()
	if len(pkts) == 0 {
		t.Fatal("no feedback")
	}
	got := map[uint16]int64{}
	for _, p := range pkts {
		raw, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		var back rtcp.TransportLayerCC
		if err := back.Unmarshal(raw); err != nil {
			t.Fatal(err)
		}
		if back.SenderSSRC != i.senderSSRC {
			t.Errorf("sender SSRC %x, want %x", back.SenderSSRC, i.senderSSRC)
		}
		for s, a := range decodeTWCC(t, &back) {
			got[s] = a
		}
	}
	if len(got) != len(want) {
		t.Fatalf("feedback reports %d packets received, want %d", len(got), len(want))
	}
	for s, a := range want {
		g, ok := got[s]
		if !ok {
			t.Errorf("transport seq %d missing from the feedback", s)
			continue
		}
		// 250 us resolution, rounded: each delta within 125 us, and the
		// rounding does not accumulate (pion tracks the rounded time).
		if d := g - a; d > 250 || d < -250 {
			t.Errorf("transport seq %d at %d us, want %d", s, g, a)
		}
	}
	if pkts := i.buildTWCC(); len(pkts) != 0 {
		t.Errorf("%d feedback packets with nothing new", len(pkts))
	}
}

// rawReader is a pion RTPReader over a list of packets.
type rawReader struct {
	mu   sync.Mutex
	pkts [][]byte
}

func (r *rawReader) Read(b []byte, a interceptor.Attributes) (int, interceptor.Attributes, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.pkts[0]
	r.pkts = r.pkts[1:]
	return copy(b, p), a, nil
}

func marshal(t testing.TB, h *rtp.Header) []byte {
	b, err := (&rtp.Packet{Header: *h, Payload: make([]byte, 100)}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBothPathsFeedOneState(t *testing.T) {
	i := newTest(t)
	r := &rawReader{}
	bound := i.BindRemoteStream(videoInfo(5), r)
	buf := make([]byte, 1500)
	at := time.Now().UnixNano()
	// Sequence 1..30: odd ones through pion's chain, even ones direct,
	// 17 and 18 lost; transport sequence numbers follow.
	for s := uint16(1); s <= 30; s++ {
		if s == 17 || s == 18 {
			continue
		}
		h := header(5, s, uint32(s)*3000, int(s))
		if s%2 == 1 {
			r.pkts = append(r.pkts, marshal(t, h))
			if _, _, err := bound.Read(buf, nil); err != nil {
				t.Fatal(err)
			}
		} else {
			i.Receive(h, at)
		}
	}
	if got := nackSeqs(i.buildNACKs(), 5); !slices.Equal(got, []uint16{17, 18}) {
		t.Errorf("NACKed %v, want [17 18]", got)
	}
	b := i.buildReports(time.Now().UnixNano())[0].(*rtcp.ReceiverReport).Reports[0]
	if b.TotalLost != 2 || b.LastSequenceNumber != 30 {
		t.Errorf("lost %d highest %d, want 2 and 30", b.TotalLost, b.LastSequenceNumber)
	}
	n := 0
	for _, p := range i.buildTWCC() {
		n += len(decodeTWCC(t, p.(*rtcp.TransportLayerCC)))
	}
	if n != 28 {
		t.Errorf("TWCC reports %d packets received, want 28", n)
	}
	if st := i.Stats(); st.Packets != 28 || st.UnknownSSRC != 0 {
		t.Errorf("stats %+v", st)
	}
	// Unbound: forgotten.
	i.UnbindRemoteStream(videoInfo(5))
	if pkts := i.buildReports(time.Now().UnixNano()); len(pkts) != 0 {
		t.Errorf("%d RRs after unbind", len(pkts))
	}
}

func TestBadRTPIsCounted(t *testing.T) {
	i := newTest(t)
	r := &rawReader{pkts: [][]byte{{0x80, 0x60, 0, 1}}}
	bound := i.BindRemoteStream(videoInfo(5), r)
	n, _, err := bound.Read(make([]byte, 1500), nil)
	if err != nil || n != 4 {
		t.Fatalf("read %d %v: the packet must pass on", n, err)
	}
	if i.Stats().BadRTP != 1 {
		t.Errorf("bad RTP not counted")
	}
}

func TestAllocs(t *testing.T) {
	i := newTest(t)
	i.AddStream(videoInfo(5))
	h := header(5, 0, 0, 0)
	at := time.Now().UnixNano()
	var seq uint16
	step := func() {
		seq++
		h.SequenceNumber = seq
		h.Timestamp += 3000
		b, _ := (&rtp.TransportCCExtension{TransportSequence: seq}).Marshal()
		_ = h.SetExtension(tccID, b)
		at += int64(time.Millisecond)
	}
	// Warm up: the pending queue grows to a tick's worth once.
	for range 300 {
		step()
		i.Receive(h, at)
	}
	i.buildTWCC()
	var ext [2]byte
	if a := testing.AllocsPerRun(200, func() {
		seq++
		h.SequenceNumber = seq
		ext[0], ext[1] = byte(seq>>8), byte(seq)
		_ = h.SetExtension(tccID, ext[:])
		at += int64(time.Millisecond)
		i.Receive(h, at)
	}); a != 0 {
		t.Errorf("Receive: %v allocations per packet", a)
	}
	r := &rawReader{}
	bound := i.BindRemoteStream(videoInfo(6), r)
	for k := range 400 {
		r.pkts = append(r.pkts, marshal(t, header(6, uint16(k), uint32(k)*3000, 1000+k)))
	}
	buf := make([]byte, 1500)
	for range 100 {
		_, _, _ = bound.Read(buf, nil)
	}
	i.buildTWCC()
	if a := testing.AllocsPerRun(200, func() { _, _, _ = bound.Read(buf, nil) }); a != 0 {
		t.Errorf("bound reader: %v allocations per packet", a)
	}
	raw, _ := rtcp.Marshal([]rtcp.Packet{&rtcp.SenderReport{SSRC: 5, NTPTime: 1}, rtcp.NewCNAMESourceDescription(5, "c")})
	if a := testing.AllocsPerRun(100, func() { i.ReceiveRTCP(raw, at) }); a != 0 {
		t.Errorf("ReceiveRTCP: %v allocations per packet", a)
	}
}

// capture is an RTCPWriter that keeps what it is given.
type capture struct {
	mu     sync.Mutex
	writes int
	pkts   []rtcp.Packet
}

func (c *capture) Write(pkts []rtcp.Packet, _ interceptor.Attributes) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	c.pkts = append(c.pkts, pkts...)
	return 0, nil
}

func (c *capture) has(pred func(rtcp.Packet) bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.ContainsFunc(c.pkts, pred)
}

func TestLoopSendsAllThree(t *testing.T) {
	var node Counters
	i, err := New(ReportInterval(50*time.Millisecond), NACKInterval(20*time.Millisecond), TWCCInterval(20*time.Millisecond),
		WithCounters(&node))
	if err != nil {
		t.Fatal(err)
	}
	w := &capture{}
	i.BindRTCPWriter(w)
	i.BindRTCPWriter(w) // once only
	i.AddStream(videoInfo(1))
	at := time.Now().UnixNano()
	for s := uint16(1); s <= 20; s++ {
		if s != 10 {
			i.Receive(header(1, s, uint32(s)*3000, int(s)), at)
		}
	}
	isNACK := func(p rtcp.Packet) bool { _, ok := p.(*rtcp.TransportLayerNack); return ok }
	isRR := func(p rtcp.Packet) bool { _, ok := p.(*rtcp.ReceiverReport); return ok }
	isTWCC := func(p rtcp.Packet) bool { _, ok := p.(*rtcp.TransportLayerCC); return ok }
	if !testkit.Eventually(5*time.Second, func() bool { return w.has(isNACK) && w.has(isRR) && w.has(isTWCC) }) {
		t.Fatalf("not every kind of feedback sent: nack %v rr %v twcc %v", w.has(isNACK), w.has(isRR), w.has(isTWCC))
	}
	if err := i.Close(); err != nil {
		t.Fatal(err)
	}
	if err := i.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	i.Receive(header(1, 21, 0, 21), at) // after Close: harmless
	st := i.Stats()
	if st.NACKs == 0 || st.Reports == 0 || st.TWCC == 0 || st.WriteErrors != 0 || st.Packets != 20 {
		t.Errorf("stats %+v", st)
	}
	ns := node.Stats()
	if ns.NACKs != st.NACKs || ns.Reports != st.Reports || ns.TWCC != st.TWCC || ns.NACKed != st.NACKed || ns.Packets != 0 {
		t.Errorf("node counters %+v, instance %+v", ns, st)
	}
}

func TestCloseBeforeBind(t *testing.T) {
	i, err := New()
	if err != nil {
		t.Fatal(err)
	}
	_ = i.Close()
	i.BindRTCPWriter(&capture{}) // must not start the goroutine (goleak)
}

func TestOptions(t *testing.T) {
	for _, tc := range []struct {
		opt  Option
		want error
	}{
		{NACKInterval(0), ErrInterval},
		{ReportInterval(-1), ErrInterval},
		{TWCCInterval(0), ErrInterval},
		{NACKMaxPerPacket(256), ErrMaxNACKs},
		{NACKSkipLastN(512), ErrSkipLastN},
		{NACKMaxPerPacket(10), nil},
	} {
		if _, err := NewFactory(tc.opt); err != tc.want {
			t.Errorf("got %v, want %v", err, tc.want)
		}
	}
	f, _ := NewFactory()
	a, _ := f.NewInterceptor("")
	b, _ := f.NewInterceptor("")
	if a == b {
		t.Error("the factory must make one interceptor per peer connection")
	}
	_ = a.Close()
	_ = b.Close()
	i := newTest(t)
	x, _ := i.Factory().NewInterceptor("")
	if x != i {
		t.Error("Factory must hand out the instance")
	}
}

func BenchmarkReceive(b *testing.B) {
	i, _ := New()
	defer i.Close()
	i.AddStream(videoInfo(5))
	h := header(5, 0, 0, 0)
	var ext [2]byte
	at := time.Now().UnixNano()
	b.ReportAllocs()
	for k := range b.N {
		seq := uint16(k)
		h.SequenceNumber = seq
		h.Timestamp = uint32(k/3) * 3000
		ext[0], ext[1] = byte(seq>>8), byte(seq)
		_ = h.SetExtension(tccID, ext[:])
		at += int64(100 * time.Microsecond)
		i.Receive(h, at)
		if k%1000 == 999 {
			b.StopTimer()
			i.buildTWCC()
			b.StartTimer()
		}
	}
}

// compound is a CompoundWriter that takes what it is given when take is
// set, else declines (the Interceptor must then call Write).
type compound struct {
	capture
	take  bool
	raw   int // compound packets taken
	bytes int
}

func (c *compound) WriteCompound(b []byte) (bool, error) {
	if !c.take {
		return false, nil
	}
	pkts, err := rtcp.Unmarshal(b)
	if err != nil {
		return true, err
	}
	c.mu.Lock()
	c.raw++
	c.bytes += len(b)
	c.mu.Unlock()
	_, _ = c.capture.Write(pkts, nil)
	return true, nil
}

// TestWriters: WithWriter replaces the writer pion binds; a CompoundWriter
// gets the feedback marshalled (at most MaxCompound bytes a write), or,
// when it declines, through Write.
func TestWriters(t *testing.T) {
	for _, take := range []bool{true, false} {
		own := &compound{take: take}
		i := newTest(t, WithWriter(own), NACKInterval(10*time.Millisecond), TWCCInterval(10*time.Millisecond))
		// 60 streams: the receiver reports alone need two RRs and more
		// than one write.
		for ssrc := uint32(1); ssrc <= 60; ssrc++ {
			i.AddStream(videoInfo(ssrc))
		}
		at := time.Now().UnixNano()
		for s := uint16(1); s <= 10; s++ {
			for ssrc := uint32(1); ssrc <= 60; ssrc++ {
				if s != 5 {
					i.Receive(header(ssrc, s, uint32(s)*3000, int(s)+int(ssrc)*10), at)
				}
			}
		}
		// One tick's batches, written before the loop starts rather than
		// waiting a second for its receiver reports.
		pkts := append(i.buildReports(at), i.buildNACKs()...)
		i.write(own, pkts)
		if got := len(own.pkts); got != len(pkts) {
			t.Fatalf("take %v: %d packets written, want %d", take, got, len(pkts))
		}
		if take && (own.raw < 2 || own.bytes/own.raw > MaxCompound || own.writes != own.raw) {
			t.Errorf("compound writes %d, %d bytes, plain writes %d", own.raw, own.bytes, own.writes)
		}
		if !take && (own.raw != 0 || own.writes < 2) {
			t.Errorf("declined: %d compound writes, %d plain", own.raw, own.writes)
		}
		bound := &capture{}
		i.BindRTCPWriter(bound)
		isNACK := func(p rtcp.Packet) bool { _, ok := p.(*rtcp.TransportLayerNack); return ok }
		testkit.WaitFor(t, 5*time.Second, "the loop's NACKs through the WithWriter writer", func() bool { return own.has(isNACK) })
		_ = i.Close()
		if bound.writes != 0 || i.Stats().WriteErrors != 0 {
			t.Errorf("take %v: %d writes to the bound writer, stats %+v", take, bound.writes, i.Stats())
		}
	}
}

// TestAppendCompoundAllocs: receiver reports and NACKs are marshalled
// into the caller's buffer without allocating.
func TestAppendCompoundAllocs(t *testing.T) {
	pkts := []rtcp.Packet{
		&rtcp.ReceiverReport{SSRC: 1, Reports: []rtcp.ReceptionReport{{SSRC: 2, TotalLost: 3}, {SSRC: 4}}},
		&rtcp.TransportLayerNack{SenderSSRC: 1, MediaSSRC: 2, Nacks: []rtcp.NackPair{{PacketID: 7, LostPackets: 3}}},
	}
	buf := make([]byte, 0, MaxCompound)
	if a := testing.AllocsPerRun(100, func() { buf, _ = AppendCompound(buf[:0], pkts) }); a != 0 {
		t.Errorf("%v allocations", a)
	}
}
