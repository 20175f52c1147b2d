//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package turnchannel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/kfast"
	"github.com/traverse-rtc/traverse/internal/kfast/kfasttest"
)

const (
	actOK       = kfasttest.ActOK
	actUnspec   = kfasttest.ActUnspec
	actRedirect = kfasttest.ActRedirect
)

type pkt = kfasttest.Packet

var (
	tClient = netip.MustParseAddrPort("198.51.100.7:4000")
	tListen = netip.MustParseAddrPort("203.0.113.5:3478")
	tRelay  = netip.MustParseAddrPort("203.0.113.5:50000")
	tPeer   = netip.MustParseAddrPort("192.0.2.20:6000")
	tChan   = uint16(0x4001)
)

// testProg is the loaded program with helpers to install flows directly.
type testProg struct {
	l *kfast.Loader
}

func loadProg(tb testing.TB) *testProg {
	tb.Helper()
	cfg := kfast.Config{Program: program, Maps: map[string]uint32{flowMap: 1024}, Slots: 1024}
	return &testProg{l: kfasttest.Load(tb, cfg)}
}

// install puts both directions of a flow, redirected to ifindex (0: up the
// stack), relayed for ttl, and returns the counter slots (up, down).
func (p *testProg) install(tb testing.TB, client, listen, relay, peer netip.AddrPort, ch uint16, ifindex int, ttl time.Duration) (uint32, uint32) {
	tb.Helper()
	r := kfast.Route{Ifindex: ifindex, Local: ifindex == 0, MTU: 1500}
	if r.Local {
		r.MTU = 65536 // lo
	}
	s, err := p.l.Slots(2)
	if err != nil {
		tb.Fatal(err)
	}
	dl := kfast.Deadline(time.Now().Add(ttl))
	uv := relayValue{Out: r.To(relay, peer, s[0], dl)}
	dv := relayValue{Out: r.To(listen, client, s[1], dl), Channel: kfast.BE16(ch)}
	if err := p.l.Map(flowMap).Put(key(client, listen, ch), uv); err != nil {
		tb.Fatal(err)
	}
	if err := p.l.Map(flowMap).Put(key(peer, relay, 0), dv); err != nil {
		tb.Fatal(err)
	}
	return s[0], s[1]
}

// remove deletes a flow install put and frees its slots.
func (p *testProg) remove(tb testing.TB, client, listen, relay, peer netip.AddrPort, ch uint16, up, down uint32) {
	tb.Helper()
	for _, k := range []relayKey{key(client, listen, ch), key(peer, relay, 0)} {
		if err := p.l.Map(flowMap).Delete(k); err != nil {
			tb.Fatal(err)
		}
	}
	p.l.Release(up, down)
}

func (p *testProg) counters(tb testing.TB, slot uint32) (packets, bytes uint64) {
	tb.Helper()
	c, err := p.l.Read(slot)
	if err != nil {
		tb.Fatal(err)
	}
	return c.Packets, c.Bytes
}

func (p *testProg) run(tb testing.TB, in []byte) (uint32, []byte) {
	tb.Helper()
	return kfasttest.Run(tb, p.l.Program(), in)
}

// channelData builds a ChannelData message with pad trailing bytes (of
// value padByte).
func channelData(ch uint16, data []byte, pad int, padByte byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, ch)
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	b = append(b, data...)
	for range pad {
		b = append(b, padByte)
	}
	return b
}

// checkOut runs in through the program and checks it comes out as src ->
// dst carrying payload, with TTL 64 (as the server's sockets send), both
// checksums recomputed from scratch (or a zero UDP checksum kept).
func (p *testProg) checkOut(t *testing.T, in []byte, ret uint32, src, dst netip.AddrPort, payload []byte, zeroCsum bool) {
	t.Helper()
	kfasttest.CheckRewrite(t, p.l.Program(), kfasttest.Rewrite{In: in, Ret: ret, Src: src, Dst: dst, Payload: payload, ZeroCsum: zeroCsum, TTL: 64})
}

func data(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(0x80 + i*7)
	}
	return b
}

func TestProgramRelays(t *testing.T) {
	p := loadProg(t)
	p.install(t, tClient, tListen, tRelay, tPeer, tChan, 3, time.Minute)
	d160 := data(160)

	toPeer := []struct {
		name    string
		data    []byte
		pad     int
		padByte byte
		noCsum  bool
	}{
		{"RTP-sized", d160, 0, 0, false},
		{"empty", nil, 0, 0, false},
		{"one byte", data(1), 0, 0, false},
		{"odd length", data(33), 0, 0, false},
		{"odd length, 3 bytes of zero padding", data(33), 3, 0, false},
		{"odd length, padding of 0xff", data(33), 3, 0xff, false},
		{"even length, 2 bytes of padding", data(34), 2, 0xa5, false},
		{"1 byte of padding", data(35), 1, 0x5a, false},
		{"zero UDP checksum stays zero", d160, 0, 0, true},
		{"zero UDP checksum with padding", data(33), 3, 7, true},
		{"MTU-sized", data(1500 - 28), 0, 0, false},
	}
	for _, tc := range toPeer {
		t.Run("client to peer: "+tc.name, func(t *testing.T) {
			in := pkt{Src: tClient, Dst: tListen, NoCsum: tc.noCsum, Payload: channelData(tChan, tc.data, tc.pad, tc.padByte)}.Bytes()
			p.checkOut(t, in, actRedirect, tRelay, tPeer, tc.data, tc.noCsum)
		})
	}
	toClient := []struct {
		name   string
		data   []byte
		noCsum bool
	}{
		{"RTP-sized", d160, false},
		{"empty", nil, false},
		{"one byte", data(1), false},
		{"odd length", data(33), false},
		{"looks like ChannelData", channelData(0x4002, data(20), 0, 0), false},
		{"looks like our own channel", channelData(tChan, data(20), 0, 0), false},
		{"zero UDP checksum stays zero", d160, true},
		{"MTU-sized", data(1500 - 28 - 4), false},
	}
	for _, tc := range toClient {
		t.Run("peer to client: "+tc.name, func(t *testing.T) {
			in := pkt{Src: tPeer, Dst: tRelay, NoCsum: tc.noCsum, Payload: tc.data}.Bytes()
			p.checkOut(t, in, actRedirect, tListen, tClient, channelData(tChan, tc.data, 0, 0), tc.noCsum)
		})
	}
}

func TestProgramPassesUp(t *testing.T) {
	// A flow without an interface (both ends local: lo) goes up the stack.
	p := loadProg(t)
	p.install(t, tClient, tListen, tRelay, tPeer, tChan, 0, time.Minute)
	t.Run("client to peer", func(t *testing.T) {
		in := pkt{Src: tClient, Dst: tListen, Payload: channelData(tChan, data(50), 2, 0)}.Bytes()
		p.checkOut(t, in, actOK, tRelay, tPeer, data(50), false)
	})
	t.Run("peer to client", func(t *testing.T) {
		in := pkt{Src: tPeer, Dst: tRelay, Payload: data(51)}.Bytes()
		p.checkOut(t, in, actOK, tListen, tClient, channelData(tChan, data(51), 0, 0), false)
	})
	// lo's MTU leaves the program's own limit.
	t.Run("largest to peer", func(t *testing.T) {
		in := pkt{Src: tClient, Dst: tListen, Payload: channelData(tChan, data(maxData), 0, 0)}.Bytes()
		p.checkOut(t, in, actOK, tRelay, tPeer, data(maxData), false)
	})
	t.Run("largest to client", func(t *testing.T) {
		in := pkt{Src: tPeer, Dst: tRelay, Payload: data(maxData)}.Bytes()
		p.checkOut(t, in, actOK, tListen, tClient, channelData(tChan, data(maxData), 0, 0), false)
	})
}

func TestProgramPasses(t *testing.T) {
	p := loadProg(t)
	up, down := p.install(t, tClient, tListen, tRelay, tPeer, tChan, 3, time.Minute)
	// An expired flow: installed with a deadline already past.
	xClient := netip.AddrPortFrom(tClient.Addr(), 4444)
	xPeer := netip.AddrPortFrom(tPeer.Addr(), 6666)
	p.install(t, xClient, tListen, tRelay, xPeer, tChan, 3, -time.Second)
	d := data(160)
	cd := channelData(tChan, d, 0, 0)
	stun := append([]byte{0x00, 0x16, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42}, make([]byte, 12)...)
	bigPeer := pkt{Src: tPeer, Dst: tRelay, Payload: data(maxData + 1)}
	passes := []struct {
		name string
		p    pkt
	}{
		{"unknown channel", pkt{Src: tClient, Dst: tListen, Payload: channelData(0x4002, d, 0, 0)}},
		{"bound channel from another client port", pkt{Src: netip.AddrPortFrom(tClient.Addr(), 4001), Dst: tListen, Payload: cd}},
		{"bound channel to another listener port", pkt{Src: tClient, Dst: netip.AddrPortFrom(tListen.Addr(), 3479), Payload: cd}},
		{"Send indication", pkt{Src: tClient, Dst: tListen, Payload: stun}},
		{"ChannelData shorter than its length", pkt{Src: tClient, Dst: tListen, Payload: cd[:100]}},
		{"header only, length 1", pkt{Src: tClient, Dst: tListen, Payload: []byte{0x40, 0x01, 0, 1}}},
		{"4 bytes after the data", pkt{Src: tClient, Dst: tListen, Payload: channelData(tChan, d, 4, 0)}},
		{"too big to move", pkt{Src: tClient, Dst: tListen, Payload: channelData(tChan, data(maxData+1), 0, 0)}},
		{"three bytes", pkt{Src: tClient, Dst: tListen, Payload: []byte{0x40, 0x01, 0}}},
		{"expired channel", pkt{Src: xClient, Dst: tListen, Payload: cd}},
		{"expired peer", pkt{Src: xPeer, Dst: tRelay, Payload: d}},
		{"peer from another port", pkt{Src: netip.AddrPortFrom(tPeer.Addr(), 6001), Dst: tRelay, Payload: d}},
		{"peer to another relayed port", pkt{Src: tPeer, Dst: netip.AddrPortFrom(tRelay.Addr(), 50001), Payload: d}},
		{"peer datagram beyond what the program moves", bigPeer},
	}
	for _, tc := range passes {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.p.Bytes()
			ret, out := p.run(t, in)
			if ret != actUnspec {
				t.Fatalf("returned %d, want TC_ACT_UNSPEC (pass)", int32(ret))
			}
			if !bytes.Equal(out, in) {
				t.Errorf("packet changed:\n got %x\nwant %x", out, in)
			}
		})
	}
	for _, s := range []uint32{up, down} {
		if n, _ := p.counters(t, s); n != 0 {
			t.Errorf("slot %d counted %d passed packets", s, n)
		}
	}
	// What every program hands on, in both directions.
	counted := func(tb testing.TB) uint64 {
		a, _ := p.counters(tb, up)
		b, _ := p.counters(tb, down)
		return a + b
	}
	kfasttest.Passes(t, p.l.Program(), pkt{Src: tClient, Dst: tListen, Payload: cd}, counted)
	kfasttest.Passes(t, p.l.Program(), pkt{Src: tPeer, Dst: tRelay, Payload: d}, counted)
	// max_len: a flow whose egress MTU the framed datagram would exceed.
	mClient := netip.AddrPortFrom(tClient.Addr(), 4555)
	mPeer := netip.AddrPortFrom(tPeer.Addr(), 6555)
	p.install(t, mClient, tListen, tRelay, mPeer, tChan, 3, time.Minute) // MTU 1500
	for _, tc := range []struct {
		n    int
		pass bool
	}{{1472 - 4, false}, {1472 - 3, true}} {
		in := pkt{Src: mPeer, Dst: tRelay, Payload: data(tc.n)}.Bytes()
		if ret, _ := p.run(t, in); (ret == actUnspec) != tc.pass {
			t.Errorf("%d bytes to a 1500-byte MTU returned %d", tc.n, int32(ret))
		}
	}
}

// TestProgramCounters: each relayed packet adds one packet and its data
// bytes (not headers, not padding) to its direction's slot.
func TestProgramCounters(t *testing.T) {
	p := loadProg(t)
	up, down := p.install(t, tClient, tListen, tRelay, tPeer, tChan, 3, time.Minute)
	var wantUp, wantDown uint64
	for i := range 10 {
		n := 100 + i
		var in []byte
		if i%3 == 0 {
			in = pkt{Src: tPeer, Dst: tRelay, Payload: data(n)}.Bytes()
			wantDown += uint64(n)
		} else {
			in = pkt{Src: tClient, Dst: tListen, Payload: channelData(tChan, data(n), (4-n%4)%4, 0)}.Bytes()
			wantUp += uint64(n)
		}
		if ret, _ := p.run(t, in); ret != actRedirect {
			t.Fatalf("packet %d returned %d", i, int32(ret))
		}
	}
	kfasttest.CheckCounts(t, p.l, up, "client to peer", 6, wantUp)
	kfasttest.CheckCounts(t, p.l, down, "peer to client", 4, wantDown)
}

// TestProgramChecksumsRandom relays random flows and payloads both ways
// and checks both checksums against a recomputation, covering carries, odd
// lengths, padding and the 0x0000/0xffff corner of the UDP checksum.
func TestProgramChecksumsRandom(t *testing.T) {
	p := loadProg(t)
	kfasttest.Random(t, 300, func(r *rand.Rand, i int) string {
		client, listen, relay, peer := kfasttest.RandomAddrPort(r), kfasttest.RandomAddrPort(r), kfasttest.RandomAddrPort(r), kfasttest.RandomAddrPort(r)
		ch := uint16(0x4000 + r.IntN(0x1000))
		up, down := p.install(t, client, listen, relay, peer, ch, 1, time.Minute)
		payload := kfasttest.RandomPayload(r, 300)
		noCsum := i%10 == 0
		pad := r.IntN(4)
		in := pkt{Src: client, Dst: listen, TTL: byte(1 + r.IntN(255)), NoCsum: noCsum, Payload: channelData(ch, payload, pad, byte(r.Uint32()))}.Bytes()
		p.checkOut(t, in, actRedirect, relay, peer, payload, noCsum)
		in = pkt{Src: peer, Dst: relay, TTL: byte(1 + r.IntN(255)), NoCsum: noCsum, Payload: payload}.Bytes()
		p.checkOut(t, in, actRedirect, listen, client, channelData(ch, payload, 0, 0), noCsum)
		p.remove(t, client, listen, relay, peer, ch, up, down)
		return fmt.Sprintf("client %v listen %v relay %v peer %v channel %#x pad %d", client, listen, relay, peer, ch, pad)
	})
}

// BenchmarkProgram is the program's own cost per relayed packet as
// BPF_PROG_TEST_RUN measures it (lookups, data move, checksums, counters,
// redirect target; not the transmission). BPF_PROG_TEST_RUN repeats the
// program on the same skb, so a second flow maps the first one's output
// back to its input: the runs alternate between stripping (to the peer)
// and framing (to the client), and the figure is their average.
func BenchmarkProgram(b *testing.B) {
	p := loadProg(b)
	p.install(b, tClient, tListen, tRelay, tPeer, tChan, 1, time.Hour)
	p.install(b, tListen, tClient, tPeer, tRelay, tChan, 1, time.Hour)
	in := pkt{Src: tClient, Dst: tListen, Payload: channelData(tChan, data(160), 0, 0)}.Bytes()
	kfasttest.Benchmark(b, p.l.Program(), in)
}

// FuzzProgram runs arbitrary frames through the program with one flow
// installed. A frame it hands on must come out unchanged; a frame it
// relays must be one of the flow's, come out as the flow's rewrite with a
// valid IP header checksum, the right lengths, the data in place, and a
// valid UDP checksum whenever the input's was valid.
func FuzzProgram(f *testing.F) {
	p := loadProg(f)
	p.install(f, tClient, tListen, tRelay, tPeer, tChan, 1, time.Hour)
	for _, s := range []pkt{
		{Src: tClient, Dst: tListen, Payload: channelData(tChan, data(40), 0, 0)},
		{Src: tClient, Dst: tListen, Payload: channelData(tChan, data(41), 3, 9)},
		{Src: tClient, Dst: tListen, NoCsum: true, Payload: channelData(tChan, data(41), 0, 0)},
		{Src: tClient, Dst: tListen, Payload: channelData(tChan, data(40), 0, 0)[:30]},
		{Src: tPeer, Dst: tRelay, Payload: data(41)},
		{Src: tPeer, Dst: tRelay, Payload: data(41), UDPLenAdd: 1},
		{Src: tClient, Dst: tListen, IHL: 6, Payload: data(40)},
	} {
		f.Add(s.Bytes())
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, ok := kfasttest.Redirected(t, p.l.Program(), in)
		if !ok {
			return
		}
		if len(in) < 42 {
			t.Fatalf("relayed a %d-byte frame", len(in))
		}
		src, dst := kfasttest.Tuple(in)
		tot := int(binary.BigEndian.Uint16(in[16:]))
		udpIn := in[34 : 14+tot]
		validIn := binary.BigEndian.Uint16(udpIn[6:]) != 0 && kfasttest.UDPChecksum(in[14:34], udpIn) == binary.BigEndian.Uint16(udpIn[6:])
		var wantSrc, wantDst netip.AddrPort
		var payload []byte
		switch {
		case src == tClient && dst == tListen:
			n := int(binary.BigEndian.Uint16(udpIn[10:]))
			if binary.BigEndian.Uint16(udpIn[8:]) != tChan || 12+n > len(udpIn) || len(udpIn)-12-n > 3 {
				t.Fatalf("relayed bad ChannelData %x", udpIn)
			}
			wantSrc, wantDst, payload = tRelay, tPeer, udpIn[12:12+n]
		case src == tPeer && dst == tRelay:
			wantSrc, wantDst, payload = tListen, tClient, channelData(tChan, udpIn[8:], 0, 0)
		default:
			t.Fatalf("relayed a frame of no flow: %x", in)
		}
		if len(out) != 42+len(payload) {
			t.Fatalf("relayed frame of %d bytes, want %d", len(out), 42+len(payload))
		}
		ip, udp := out[14:34], out[34:]
		if gotSrc, gotDst := kfasttest.Tuple(out); gotSrc != wantSrc || gotDst != wantDst {
			t.Errorf("relayed as %v -> %v, want %v -> %v", gotSrc, gotDst, wantSrc, wantDst)
		}
		if kfasttest.Fold(kfasttest.Sum(0, ip)) != 0xffff {
			t.Errorf("IP header checksum does not verify")
		}
		if int(binary.BigEndian.Uint16(ip[2:])) != 28+len(payload) || int(binary.BigEndian.Uint16(udp[4:])) != 8+len(payload) {
			t.Errorf("lengths: IP %d UDP %d for %d bytes of payload", binary.BigEndian.Uint16(ip[2:]), binary.BigEndian.Uint16(udp[4:]), len(payload))
		}
		if !bytes.Equal(udp[8:], payload) {
			t.Errorf("payload\n got %x\nwant %x", udp[8:], payload)
		}
		if validIn && kfasttest.UDPChecksum(ip, udp) != binary.BigEndian.Uint16(udp[6:]) {
			t.Errorf("valid UDP checksum made invalid: in %x out %x", in, out)
		}
	})
}
