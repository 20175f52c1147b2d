//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package distribution

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/traverse-rtc/traverse/internal/kfast"
	"github.com/traverse-rtc/traverse/internal/kfast/kfasttest"
)

const (
	actShot     = 2 // TC_ACT_SHOT
	actRedirect = 7 // TC_ACT_REDIRECT: the last receiver gets the packet itself
)

// noSuchIfindex makes every clone of a test run fail, so that nothing
// leaves the host while the rewrite is checked.
const noSuchIfindex = 0x7ffffff0

func rtpPayload(first, pt byte, ssrc uint32, n int) []byte {
	b := make([]byte, n)
	b[0], b[1] = first, pt
	if n >= 12 {
		binary.BigEndian.PutUint32(b[8:], ssrc)
	}
	return b
}

var (
	tDst = netip.MustParseAddrPort("203.0.113.1:5004")
	tSrc = netip.MustParseAddrPort("198.51.100.7:4000")
	tR1  = netip.MustParseAddrPort("192.0.2.10:6000")
	tR2  = netip.MustParseAddrPort("192.0.2.11:6002")
)

// loadStream loads the program with one stream (SSRC 42, from tSrc's
// address) to tR1 and tR2: its slot 1, the receivers' 2 and 3.
func loadStream(tb testing.TB) (*kfast.Loader, value) {
	l := kfasttest.Load(tb, kfast.Config{Program: program, Maps: map[string]uint32{streamsMap: 16, lastMap: 8}, Slots: 8})
	ky := key{Daddr: kfast.TupleOf(tDst, tDst).Daddr, Dport: kfast.BE16(tDst.Port()), HasSSRC: 1, SSRC: be32(42)}
	v := value{Source: kfast.TupleOf(tSrc, tSrc).Saddr, N: 2, Slot: 1}
	for i, r := range []netip.AddrPort{tR1, tR2} {
		v.R[i] = rcv{Out: kfast.Out{To: kfast.TupleOf(tDst, r), Ifindex: noSuchIfindex, Slot: uint32(2 + i)},
			Dmac: [6]byte{2, 0, 0, 0, 0, byte(0x10 + i)}, Smac: [6]byte{2, 0, 0, 0, 0, 0xee}}
	}
	if err := l.Map(streamsMap).Put(ky, &v); err != nil {
		tb.Fatal(err)
	}
	return l, v
}

// TestProgram table-tests the program with BPF_PROG_TEST_RUN over crafted
// frames: the conformance suite's frames it must pass untouched, its own
// (RTCP, other SSRCs and senders, not RTP), and the rewrite and counting
// of a stream's packet.
func TestProgram(t *testing.T) {
	l, v := loadStream(t)
	media := rtpPayload(0x80, 96, 42, 200)
	counted := func(tb testing.TB) uint64 {
		c, err := l.Read(1)
		if err != nil {
			tb.Fatal(err)
		}
		return c.Packets
	}
	// The conformance suite's mutations of a stream's packet (keyed by
	// its destination and the sender's address: any source port).
	kfasttest.PassesTo(t, l.Program(), kfasttest.Packet{Src: tSrc, Dst: tDst, Payload: media}, counted)
	for _, tc := range []struct {
		name string
		p    kfasttest.Packet
	}{
		{"RTCP (receiver reports, sender reports)", kfasttest.Packet{Src: tSrc, Dst: tDst, Payload: rtpPayload(0x80, 201, 42, 32)}},
		{"another SSRC, no stream without SSRC", kfasttest.Packet{Src: tSrc, Dst: tDst, Payload: rtpPayload(0x80, 96, 43, 200)}},
		{"another sender", kfasttest.Packet{Src: netip.MustParseAddrPort("198.51.100.8:4000"), Dst: tDst, Payload: media}},
		{"another port", kfasttest.Packet{Src: tSrc, Dst: netip.AddrPortFrom(tDst.Addr(), 5006), Payload: media}},
		{"RTP version 1", kfasttest.Packet{Src: tSrc, Dst: tDst, Payload: rtpPayload(0x40, 96, 42, 200)}},
		{"shorter than an RTP header", kfasttest.Packet{Src: tSrc, Dst: tDst, Payload: rtpPayload(0x80, 96, 42, 11)}},
		{"IP options", kfasttest.Packet{Src: tSrc, Dst: tDst, IHL: 6, Payload: media}},
		{"fragment", kfasttest.Packet{Src: tSrc, Dst: tDst, FragOff: 0x2000, Payload: media}},
		{"TCP", kfasttest.Packet{Src: tSrc, Dst: tDst, Proto: 6, Payload: media}},
		{"UDP length lies", kfasttest.Packet{Src: tSrc, Dst: tDst, UDPLenAdd: 4, Payload: media}},
		{"IP length beyond the frame", kfasttest.Packet{Src: tSrc, Dst: tDst, TotLenAdd: 40, Payload: media}},
	} {
		in := tc.p.Bytes()
		ret, out := kfasttest.Run(t, l.Program(), in)
		if ret != kfasttest.ActUnspec || !bytes.Equal(out[:len(in)], in) {
			t.Errorf("%s: returned %d, frame changed %v; want passed untouched", tc.name, int32(ret), !bytes.Equal(out[:len(in)], in))
		}
	}
	for _, zero := range []bool{false, true} {
		in := kfasttest.Packet{Src: tSrc, Dst: tDst, Payload: media, NoCsum: zero}.Bytes()
		ret, out := kfasttest.Run(t, l.Program(), in)
		if ret != actRedirect {
			t.Fatalf("stream packet: returned %d, want TC_ACT_REDIRECT (to the last receiver) after the clones", int32(ret))
		}
		// The frame left is the last receiver's copy.
		kfasttest.CheckHeaders(t, out[:len(in)], tDst, tR2, zero)
		if !bytes.Equal(out[0:6], v.R[1].Dmac[:]) || !bytes.Equal(out[6:12], v.R[1].Smac[:]) {
			t.Errorf("Ethernet addresses %x, want the receiver's route's", out[:12])
		}
		if !bytes.Equal(out[42:len(in)], media) {
			t.Error("payload changed")
		}
	}
	kfasttest.CheckCounts(t, l, 1, "stream", 2, 400)
	// The clone failed (no such interface): the first receiver is not
	// counted; the last one is (the packet itself is redirected to it).
	kfasttest.CheckCounts(t, l, 2, "receiver", 0, 0)
	kfasttest.CheckCounts(t, l, 3, "last receiver", 2, 400)
}

// FuzzProgram runs arbitrary frames through the program with one stream
// installed. A frame it hands on must come out byte for byte unchanged; a
// frame it takes (redirected to the last receiver after the clones) must be the stream's RTP,
// keep its length and payload and leave as the last receiver's copy.
func FuzzProgram(f *testing.F) {
	l, _ := loadStream(f)
	media := rtpPayload(0x80, 96, 42, 40)
	for _, q := range []kfasttest.Packet{
		{Src: tSrc, Dst: tDst, Payload: media},
		{Src: tSrc, Dst: tDst, Payload: media, NoCsum: true},
		{Src: tSrc, Dst: tDst, Payload: rtpPayload(0x80, 200, 42, 40)},
		{Src: tSrc, Dst: tDst, IHL: 6, Payload: media},
		{Src: tSrc, Dst: tDst, Payload: media, Truncate: 20},
	} {
		f.Add(q.Bytes())
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, ok := kfasttest.Redirected(t, l.Program(), in)
		if !ok {
			return
		}
		if len(in) < 54 {
			t.Fatalf("took a %d-byte frame", len(in))
		}
		if from, to := kfasttest.Tuple(in); from.Addr() != tSrc.Addr() || to != tDst || binary.BigEndian.Uint32(in[50:]) != 42 {
			t.Fatalf("took a frame of another stream: %x", in)
		}
		if src, dst := kfasttest.Tuple(out); src != tDst || dst != tR2 {
			t.Errorf("rewritten to %v -> %v", src, dst)
		}
		if !bytes.Equal(out[42:len(in)], in[42:]) {
			t.Errorf("payload changed")
		}
	})
}
