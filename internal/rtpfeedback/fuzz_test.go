package rtpfeedback

import (
	"bytes"
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

// FuzzAppendCompound: receiver reports and NACKs of any field values
// marshal through AppendCompound exactly as through pion's rtcp.Marshal,
// or fail as it fails.
func FuzzAppendCompound(f *testing.F) {
	f.Add(uint32(1), uint8(2), uint16(3), []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24})
	f.Add(uint32(0xffffffff), uint8(31), uint16(300), []byte{0xff, 0xff, 0xff, 0xff})
	f.Add(uint32(0), uint8(40), uint16(0), []byte{})
	f.Fuzz(func(t *testing.T, ssrc uint32, blocks uint8, nacks uint16, vals []byte) {
		word := func(i int) uint32 {
			var w uint32
			for k := range 4 {
				if len(vals) > 0 {
					w = w<<8 | uint32(vals[(4*i+k)%len(vals)])
				}
			}
			return w
		}
		rr := &rtcp.ReceiverReport{SSRC: ssrc}
		for i := range int(blocks % 40) {
			rr.Reports = append(rr.Reports, rtcp.ReceptionReport{SSRC: word(6 * i), FractionLost: uint8(word(6*i + 1)),
				TotalLost: word(6*i+1) >> 6, LastSequenceNumber: word(6*i + 2), Jitter: word(6*i + 3),
				LastSenderReport: word(6*i + 4), Delay: word(6*i + 5)})
		}
		nack := &rtcp.TransportLayerNack{SenderSSRC: ssrc, MediaSSRC: word(0)}
		for i := range int(nacks % 300) {
			nack.Nacks = append(nack.Nacks, rtcp.NackPair{PacketID: uint16(word(i)), LostPackets: rtcp.PacketBitmap(word(i) >> 16)})
		}
		for _, pkts := range [][]rtcp.Packet{{rr}, {nack}, {rr, nack}} {
			want, wantErr := rtcp.Marshal(pkts)
			got, err := AppendCompound([]byte{0xaa}, pkts)
			if (err != nil) != (wantErr != nil) {
				t.Fatalf("error %v, pion's %v", err, wantErr)
			}
			if err == nil && !bytes.Equal(got[1:], want) {
				t.Fatalf("marshalled\n%x\npion's\n%x", got[1:], want)
			}
			if got[0] != 0xaa {
				t.Fatal("the buffer's start was overwritten")
			}
		}
	})
}
