//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package mediaflow

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/traverse-rtc/traverse/internal/kfast"
	"github.com/traverse-rtc/traverse/internal/kfast/kfasttest"
)

type pkt = kfasttest.Packet

var (
	tClient = netip.MustParseAddrPort("198.51.100.7:4000")
	tFixed  = netip.MustParseAddrPort("203.0.113.5:7000")
	tInside = netip.MustParseAddrPort("10.0.0.2:30000")
	tServer = netip.MustParseAddrPort("10.0.0.10:5000")
)

// testProg is the loaded program with its flows installed directly, each
// direction counted in its own slot.
type testProg struct {
	l     *kfast.Loader
	slots map[kfast.Tuple]uint32
}

func loadProg(tb testing.TB) *testProg {
	tb.Helper()
	cfg := kfast.Config{Program: program, Maps: map[string]uint32{flowMap: 1024}, Slots: 1024}
	return &testProg{l: kfasttest.Load(tb, cfg), slots: map[kfast.Tuple]uint32{}}
}

// put installs one direction: from -> to leaves as newSrc -> newDst.
func (p *testProg) put(tb testing.TB, from, to, newSrc, newDst netip.AddrPort, ifindex int) {
	tb.Helper()
	s, err := p.l.Slots(1)
	if err != nil {
		tb.Fatal(err)
	}
	k := kfast.TupleOf(from, to)
	v := kfast.Route{Ifindex: ifindex, MTU: 1500}.To(newSrc, newDst, s[0], 0)
	if err := p.l.Map(flowMap).Update(k, v, ebpf.UpdateAny); err != nil {
		tb.Fatal(err)
	}
	p.slots[k] = s[0]
}

func (p *testProg) del(tb testing.TB, from, to netip.AddrPort) {
	tb.Helper()
	k := kfast.TupleOf(from, to)
	if err := p.l.Map(flowMap).Delete(k); err != nil {
		tb.Fatal(err)
	}
	p.l.Release(p.slots[k])
	delete(p.slots, k)
}

func (p *testProg) slot(from, to netip.AddrPort) uint32 { return p.slots[kfast.TupleOf(from, to)] }

func (p *testProg) both(tb testing.TB) {
	p.put(tb, tClient, tFixed, tInside, tServer, 3)
	p.put(tb, tServer, tInside, tFixed, tClient, 2)
}

func TestProgram(t *testing.T) {
	p := loadProg(t)
	p.both(t)
	payload := bytes.Repeat([]byte{0x80, 0, 1, 2, 3, 4, 5, 6, 0, 0, 0, 77}, 14) // 168 bytes, RTP-like

	rewrites := []struct {
		name     string
		p        pkt
		src, dst netip.AddrPort
	}{
		{"client to fixed port goes inside to the server", pkt{Src: tClient, Dst: tFixed, Payload: payload}, tInside, tServer},
		{"server to inside port goes out of the fixed port to the client", pkt{Src: tServer, Dst: tInside, Payload: payload}, tFixed, tClient},
		{"zero UDP checksum stays zero", pkt{Src: tClient, Dst: tFixed, Payload: payload, NoCsum: true}, tInside, tServer},
		{"odd payload length", pkt{Src: tServer, Dst: tInside, Payload: payload[:33]}, tFixed, tClient},
		{"empty payload", pkt{Src: tClient, Dst: tFixed}, tInside, tServer},
		{"TTL 2 still forwarded", pkt{Src: tClient, Dst: tFixed, TTL: 2, Payload: payload}, tInside, tServer},
		{"DF set is not a fragment", pkt{Src: tClient, Dst: tFixed, FragOff: 0x4000, Payload: payload}, tInside, tServer},
	}
	for _, tc := range rewrites {
		t.Run(tc.name, func(t *testing.T) {
			kfasttest.CheckRewrite(t, p.l.Program(), kfasttest.Rewrite{In: tc.p.Bytes(), Ret: kfasttest.ActRedirect,
				Src: tc.src, Dst: tc.dst, Payload: tc.p.Payload, ZeroCsum: tc.p.NoCsum})
		})
	}

	counted := func(tb testing.TB) uint64 {
		c, err := p.l.Read(p.slot(tClient, tFixed))
		if err != nil {
			tb.Fatal(err)
		}
		return c.Packets
	}
	kfasttest.Passes(t, p.l.Program(), pkt{Src: tClient, Dst: tFixed, Payload: payload}, counted)
	// This program's own: the reply direction of a rewrite is another
	// flow, and TTL 1 goes to user space (which sends with a fresh TTL).
	before := counted(t)
	for _, in := range []pkt{{Src: tInside, Dst: tServer, Payload: payload}, {Src: tClient, Dst: tFixed, TTL: 1, Payload: payload}} {
		if ret, out := kfasttest.Run(t, p.l.Program(), in.Bytes()); ret != kfasttest.ActUnspec || !bytes.Equal(out, in.Bytes()) {
			t.Errorf("%v -> %v TTL %d: returned %d (want pass), changed %v", in.Src, in.Dst, in.TTL, int32(ret), !bytes.Equal(out, in.Bytes()))
		}
	}
	if counted(t) != before {
		t.Error("passed packets counted")
	}
}

// TestProgramCounters: each forwarded packet adds one packet and its IP
// length to its own direction's slot.
func TestProgramCounters(t *testing.T) {
	p := loadProg(t)
	p.both(t)
	var wantIn, wantOut uint64
	for i := range 10 {
		q := pkt{Src: tClient, Dst: tFixed, Payload: make([]byte, 160+i)}
		if i%3 == 0 {
			q.Src, q.Dst = tServer, tInside
		}
		in := q.Bytes()
		if ret, _ := kfasttest.Run(t, p.l.Program(), in); ret != kfasttest.ActRedirect {
			t.Fatalf("packet %d returned %d", i, int32(ret))
		}
		if i%3 == 0 {
			wantOut += uint64(len(in) - 14)
		} else {
			wantIn += uint64(len(in) - 14)
		}
	}
	// A trailing pad beyond the IP length (Ethernet padding) is not
	// counted.
	in := append(pkt{Src: tClient, Dst: tFixed, Payload: make([]byte, 100)}.Bytes(), 0, 0, 0, 0)
	if ret, _ := kfasttest.Run(t, p.l.Program(), in); ret != kfasttest.ActRedirect {
		t.Fatalf("padded packet returned %d", int32(ret))
	}
	wantIn += uint64(len(in) - 14 - 4)
	kfasttest.CheckCounts(t, p.l, p.slot(tClient, tFixed), "client->fixed", 7, wantIn)
	kfasttest.CheckCounts(t, p.l, p.slot(tServer, tInside), "server->inside", 4, wantOut)
}

// TestProgramChecksumsRandom rewrites random flows and payloads and checks
// both checksums against a recomputation, covering carries and the
// 0x0000/0xffff corner of the UDP checksum.
func TestProgramChecksumsRandom(t *testing.T) {
	p := loadProg(t)
	kfasttest.Random(t, 300, func(r *rand.Rand, i int) string {
		from, to, nsrc, ndst := kfasttest.RandomAddrPort(r), kfasttest.RandomAddrPort(r), kfasttest.RandomAddrPort(r), kfasttest.RandomAddrPort(r)
		p.put(t, from, to, nsrc, ndst, 1)
		q := pkt{Src: from, Dst: to, Payload: kfasttest.RandomPayload(r, 300), TTL: byte(2 + r.IntN(250)), NoCsum: i%10 == 0}
		kfasttest.CheckRewrite(t, p.l.Program(), kfasttest.Rewrite{In: q.Bytes(), Ret: kfasttest.ActRedirect,
			Src: nsrc, Dst: ndst, Payload: q.Payload, ZeroCsum: q.NoCsum})
		p.del(t, from, to)
		return fmt.Sprintf("%v -> %v rewritten to %v -> %v", from, to, nsrc, ndst)
	})
}

// BenchmarkProgram is the program's own cost per forwarded packet, as
// BPF_PROG_TEST_RUN measures it (lookup, rewrite, checksum helper calls,
// counters, bpf_redirect_neigh setting the target; not the transmission).
// Two entries map the flow's rewritten tuple back to the original, so
// repeated runs over the same skb keep hitting; each batch stops before
// the TTL runs out.
func BenchmarkProgram(b *testing.B) {
	p := loadProg(b)
	p.put(b, tClient, tFixed, tInside, tServer, 1)
	p.put(b, tInside, tServer, tClient, tFixed, 1)
	in := pkt{Src: tClient, Dst: tFixed, TTL: 255, Payload: make([]byte, 160)}.Bytes()
	kfasttest.Benchmark(b, p.l.Program(), in)
}

// FuzzProgram runs arbitrary frames through the program with one flow
// installed. A frame it hands on must come out byte for byte unchanged; a
// frame it redirects must be the installed flow's, keep its length and
// payload, carry the rewritten addresses and ports, and keep a valid IP
// header checksum valid.
func FuzzProgram(f *testing.F) {
	p := loadProg(f)
	p.put(f, tClient, tFixed, tInside, tServer, 1)
	payload := make([]byte, 40)
	for _, q := range []pkt{
		{Src: tClient, Dst: tFixed, Payload: payload},
		{Src: tClient, Dst: tFixed, Payload: payload, NoCsum: true},
		{Src: tClient, Dst: tFixed, TTL: 1},
		{Src: tClient, Dst: tFixed, IHL: 6, Payload: payload},
		{Src: tClient, Dst: tFixed, FragOff: 0x2000, Payload: payload},
		{Src: tServer, Dst: tInside, Payload: payload},
		{Src: tClient, Dst: tFixed, Payload: payload, Truncate: 20},
	} {
		f.Add(q.Bytes())
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, ok := kfasttest.Redirected(t, p.l.Program(), in)
		if !ok {
			return
		}
		if len(in) < 42 || len(out) != len(in) {
			t.Fatalf("redirected a %d-byte frame (out %d bytes)", len(in), len(out))
		}
		if from, to := kfasttest.Tuple(in); from != tClient || to != tFixed {
			t.Fatalf("redirected a frame of another flow: %x", in)
		}
		if !bytes.Equal(out[:22], in[:22]) || out[22] != in[22]-1 || out[23] != in[23] {
			t.Errorf("Ethernet or IP header changed beyond TTL, checksum, addresses")
		}
		if !bytes.Equal(out[42:], in[42:]) || !bytes.Equal(out[38:40], in[38:40]) {
			t.Errorf("UDP length or payload changed")
		}
		if src, dst := kfasttest.Tuple(out); src != tInside || dst != tServer {
			t.Errorf("rewritten to %v -> %v", src, dst)
		}
		if kfasttest.Fold(kfasttest.Sum(0, in[14:34])) == 0xffff && kfasttest.Fold(kfasttest.Sum(0, out[14:34])) != 0xffff {
			t.Errorf("valid IP header checksum made invalid")
		}
	})
}
