package rtpfeedback

import (
	"testing"

	"github.com/pion/rtcp"
)

// FuzzSenderReports: the allocation-free sender report scan finds
// exactly the sender reports pion's rtcp.Unmarshal finds in any compound
// packet pion accepts, and never panics on anything else.
func FuzzSenderReports(f *testing.F) {
	seed := [][]rtcp.Packet{
		{&rtcp.SenderReport{SSRC: 1, NTPTime: 0x0102030405060708, Reports: []rtcp.ReceptionReport{{SSRC: 9}}}},
		{&rtcp.ReceiverReport{SSRC: 2}, &rtcp.SenderReport{SSRC: 3, NTPTime: 42}, rtcp.NewCNAMESourceDescription(3, "cname")},
		{&rtcp.PictureLossIndication{SenderSSRC: 1, MediaSSRC: 2}},
		{&rtcp.TransportLayerNack{SenderSSRC: 1, MediaSSRC: 2, Nacks: []rtcp.NackPair{{PacketID: 5}}}},
	}
	for _, pkts := range seed {
		raw, err := rtcp.Marshal(pkts)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Add([]byte{0x80, 200, 0, 1})
	f.Add([]byte{0x80, 200, 0xff, 0xff, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		type sr struct {
			ssrc uint32
			ntp  uint64
		}
		var got []sr
		rest := b
		var scanErr error
		for {
			ssrc, ntp, r, ok, err := nextSenderReport(rest)
			if err != nil {
				scanErr = err
				break
			}
			if !ok {
				break
			}
			got = append(got, sr{ssrc, ntp})
			rest = r
		}
		// The interceptor's entry point takes it too.
		i, _ := New()
		i.ReceiveRTCP(b, 1)
		_ = i.Close()

		pkts, err := rtcp.Unmarshal(b)
		if err != nil {
			return
		}
		var want []sr
		for _, p := range pkts {
			if s, ok := p.(*rtcp.SenderReport); ok {
				want = append(want, sr{s.SSRC, s.NTPTime})
			}
		}
		if scanErr != nil {
			t.Fatalf("scan refused a packet pion accepts: %v", scanErr)
		}
		if len(got) != len(want) {
			t.Fatalf("scan found %v, pion %v", got, want)
		}
		for k := range got {
			if got[k] != want[k] {
				t.Fatalf("scan found %v, pion %v", got, want)
			}
		}
	})
}
