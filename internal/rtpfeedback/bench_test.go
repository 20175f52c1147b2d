package rtpfeedback

import (
	"encoding/binary"
	"syscall"
	"testing"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/interceptor/pkg/nack"
	"github.com/pion/interceptor/pkg/report"
	"github.com/pion/interceptor/pkg/twcc"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
)

// seqReader is an RTPReader that returns one 1200-byte video packet per
// Read, each with the next sequence number, timestamp and transport-cc
// sequence number, written in place (no allocation of its own).
type seqReader struct {
	pkt   []byte
	tccAt int
	n     uint32
}

func newSeqReader(b *testing.B) *seqReader {
	h := header(5, 0, 0, 0)
	raw, err := (&rtp.Packet{Header: *h, Payload: make([]byte, 1200)}).Marshal()
	if err != nil {
		b.Fatal(err)
	}
	// One-byte extension header: 12 bytes, then 0xBEDE and the length,
	// then the element's id/length byte: the value is at 17.
	r := &seqReader{pkt: raw, tccAt: 17}
	var back rtp.Header
	binary.BigEndian.PutUint16(raw[r.tccAt:], 0xABCD)
	if _, err := back.Unmarshal(raw); err != nil || binary.BigEndian.Uint16(back.GetExtension(tccID)) != 0xABCD {
		b.Fatal("transport-cc offset")
	}
	return r
}

func (r *seqReader) Read(b []byte, a interceptor.Attributes) (int, interceptor.Attributes, error) {
	r.n++
	binary.BigEndian.PutUint16(r.pkt[2:], uint16(r.n))
	binary.BigEndian.PutUint32(r.pkt[4:], r.n/4*3000)
	binary.BigEndian.PutUint16(r.pkt[r.tccAt:], uint16(r.n))
	return copy(b, r.pkt), a, nil
}

type discard struct{}

func (discard) Write(pkts []rtcp.Packet, _ interceptor.Attributes) (int, error) { return 0, nil }

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchChain reads b.N packets through the chain the factories build,
// bound as pion binds a publisher's video stream; every 100 packets it
// calls each (a 100 ms tick's worth at 1,000 packets/s). It reports the
// CPU time of the whole process per packet too: pion's TWCC sender hands
// every packet to its goroutine, whose work ns/op alone would miss.
func benchChain(b *testing.B, each func(), factories ...interceptor.Factory) {
	ir := &interceptor.Registry{}
	for _, f := range factories {
		ir.Add(f)
	}
	chain, err := ir.Build("")
	if err != nil {
		b.Fatal(err)
	}
	defer chain.Close()
	chain.BindRTCPWriter(discard{})
	r := chain.BindRemoteStream(videoInfo(5), newSeqReader(b))
	buf := make([]byte, 1500)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for k := range b.N {
		if _, _, err := r.Read(buf, nil); err != nil {
			b.Fatal(err)
		}
		if each != nil && k%100 == 99 {
			each()
		}
	}
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
}

// BenchmarkChainPion is what a publisher's packet cost in pion's NACK
// generator, receiver report and TWCC sender interceptors (the SFU's
// chain before rtpfeedback); BenchmarkChainRTPFeedback is the same
// packet through rtpfeedback's bound reader.
func BenchmarkChainPion(b *testing.B) {
	gen, _ := nack.NewGeneratorInterceptor()
	rr, _ := report.NewReceiverInterceptor()
	tw, _ := twcc.NewSenderInterceptor()
	benchChain(b, nil, gen, rr, tw)
}

// BenchmarkChainRTPFeedback builds the TWCC feedback and the NACKs every
// 100 packets, and the receiver reports every 1,000, inside the timed
// loop, so the per-packet figure includes the feedback's share.
func BenchmarkChainRTPFeedback(b *testing.B) {
	i, err := New(NACKInterval(time.Hour), ReportInterval(time.Hour), TWCCInterval(time.Hour))
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	benchChain(b, func() {
		i.buildTWCC()
		i.buildNACKs()
		if n++; n%10 == 0 {
			i.buildReports(time.Now().UnixNano())
		}
	}, i.Factory())
}
