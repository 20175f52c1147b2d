//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package distbpf

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/traverse-rtc/traverse/internal/mediaproxy/offloadtest"
	"github.com/traverse-rtc/traverse/internal/tcattach"
)

const actShot = 2 // TC_ACT_SHOT

// noSuchIfindex makes every bpf_clone_redirect of a test run fail, so
// that nothing leaves the host while the rewrite is checked.
const noSuchIfindex = 0x7ffffff0

func rtpPayload(first, pt byte, ssrc uint32, n int) []byte {
	b := make([]byte, n)
	b[0], b[1] = first, pt
	if n >= 12 {
		binary.BigEndian.PutUint32(b[8:], ssrc)
	}
	return b
}

// TestProgram table-tests the program with BPF_PROG_TEST_RUN over crafted
// frames: what it must pass untouched, and the rewrite and counting of a
// stream's packet.
func TestProgram(t *testing.T) {
	objs := offloadtest.Load(t, new(distributeObjects), loadDistributeObjects)
	dst := netip.MustParseAddrPort("203.0.113.1:5004")
	src := netip.MustParseAddrPort("198.51.100.7:4000")
	r1 := netip.MustParseAddrPort("192.0.2.10:6000")
	r2 := netip.MustParseAddrPort("192.0.2.11:6002")
	key := distributeDistKey{Daddr: tcattach.BE32(dst.Addr()), Dport: tcattach.BE16(dst.Port()), HasSsrc: 1, Ssrc: be32(42)}
	v := distributeDistValue{Source: tcattach.BE32(src.Addr()), N: 2, Slot: 1}
	for i, r := range []netip.AddrPort{r1, r2} {
		v.R[i] = distributeDistRcv{Addr: tcattach.BE32(r.Addr()), Port: tcattach.BE16(r.Port()), Ifindex: noSuchIfindex, Slot: uint32(2 + i),
			Dmac: [6]byte{2, 0, 0, 0, 0, byte(0x10 + i)}, Smac: [6]byte{2, 0, 0, 0, 0, 0xee}}
	}
	if err := objs.Streams.Put(key, &v); err != nil {
		t.Fatal(err)
	}
	media := rtpPayload(0x80, 96, 42, 200)
	for _, tc := range []struct {
		name string
		p    offloadtest.Packet
	}{
		{"RTCP (receiver reports, sender reports)", offloadtest.Packet{Src: src, Dst: dst, Payload: rtpPayload(0x80, 201, 42, 32)}},
		{"another SSRC, no stream without SSRC", offloadtest.Packet{Src: src, Dst: dst, Payload: rtpPayload(0x80, 96, 43, 200)}},
		{"another sender", offloadtest.Packet{Src: netip.MustParseAddrPort("198.51.100.8:4000"), Dst: dst, Payload: media}},
		{"another port", offloadtest.Packet{Src: src, Dst: netip.AddrPortFrom(dst.Addr(), 5006), Payload: media}},
		{"RTP version 1", offloadtest.Packet{Src: src, Dst: dst, Payload: rtpPayload(0x40, 96, 42, 200)}},
		{"shorter than an RTP header", offloadtest.Packet{Src: src, Dst: dst, Payload: rtpPayload(0x80, 96, 42, 11)}},
		{"IP options", offloadtest.Packet{Src: src, Dst: dst, IHL: 6, Payload: media}},
		{"fragment", offloadtest.Packet{Src: src, Dst: dst, FragOff: 0x2000, Payload: media}},
		{"TCP", offloadtest.Packet{Src: src, Dst: dst, Proto: 6, Payload: media}},
		{"IPv6 ethertype", offloadtest.Packet{Src: src, Dst: dst, EthType: 0x86dd, Payload: media}},
		{"UDP length lies", offloadtest.Packet{Src: src, Dst: dst, UDPLenAdd: 4, Payload: media}},
		{"IP length beyond the frame", offloadtest.Packet{Src: src, Dst: dst, TotLenAdd: 40, Payload: media}},
	} {
		in := tc.p.Bytes()
		ret, out := offloadtest.Run(t, objs.Distribute, in)
		if ret != offloadtest.ActUnspec || !bytes.Equal(out[:len(in)], in) {
			t.Errorf("%s: returned %d, frame changed %v; want passed untouched", tc.name, int32(ret), !bytes.Equal(out[:len(in)], in))
		}
	}
	for _, zero := range []bool{false, true} {
		in := offloadtest.Packet{Src: src, Dst: dst, Payload: media, NoCsum: zero}.Bytes()
		ret, out := offloadtest.Run(t, objs.Distribute, in)
		if ret != actShot {
			t.Fatalf("stream packet: returned %d, want TC_ACT_SHOT after the clones", int32(ret))
		}
		// The frame left is the last receiver's copy.
		offloadtest.CheckHeaders(t, out[:len(in)], dst, r2, zero)
		if !bytes.Equal(out[0:6], v.R[1].Dmac[:]) || !bytes.Equal(out[6:12], v.R[1].Smac[:]) {
			t.Errorf("Ethernet addresses %x, want the receiver's route's", out[:12])
		}
		if !bytes.Equal(out[42:len(in)], media) {
			t.Error("payload changed")
		}
	}
	var per []distributeDistCounters
	if err := objs.Counters.Lookup(uint32(1), &per); err != nil {
		t.Fatal(err)
	}
	var pk, by uint64
	for _, c := range per {
		pk, by = pk+c.Packets, by+c.Bytes
	}
	if pk != 2 || by != 400 {
		t.Errorf("stream counted %d packets %d bytes, want 2, 400", pk, by)
	}
}
