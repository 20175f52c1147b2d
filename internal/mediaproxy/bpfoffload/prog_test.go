//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpfoffload

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/traverse-rtc/traverse/internal/mediaproxy/offloadtest"
)

const (
	actUnspec   = offloadtest.ActUnspec
	actRedirect = offloadtest.ActRedirect
)

// loadObjs loads the program and its map for BPF_PROG_TEST_RUN.
func loadObjs(tb testing.TB) *fastpathObjects {
	tb.Helper()
	return offloadtest.Load(tb, new(fastpathObjects), loadFastpathObjects)
}

// pkt is a crafted Ethernet + IPv4 + UDP frame (the offloaders' shared
// test packet).
type pkt = offloadtest.Packet

// checkRewritten verifies out is in rewritten to src -> dst: addresses,
// ports, TTL-1, both checksums recomputed from scratch, payload intact.
func checkRewritten(t *testing.T, in, out []byte, src, dst netip.AddrPort, zeroCsum bool) {
	t.Helper()
	if len(out) != len(in) {
		t.Fatalf("length %d, want %d", len(out), len(in))
	}
	offloadtest.CheckHeaders(t, out, src, dst, zeroCsum)
	ip, udp := out[14:34], out[34:]
	if ip[8] != in[14+8]-1 {
		t.Errorf("TTL %d, want %d", ip[8], in[14+8]-1)
	}
	if !bytes.Equal(out[:12], in[:12]) {
		t.Errorf("Ethernet addresses changed before the redirect")
	}
	if !bytes.Equal(udp[8:], in[42:]) || !bytes.Equal(udp[4:6], in[38:40]) {
		t.Errorf("UDP length or payload changed")
	}
}

var (
	tClient = netip.MustParseAddrPort("198.51.100.7:4000")
	tFixed  = netip.MustParseAddrPort("203.0.113.5:7000")
	tInside = netip.MustParseAddrPort("10.0.0.2:30000")
	tServer = netip.MustParseAddrPort("10.0.0.10:5000")
)

func putFlow(tb testing.TB, objs *fastpathObjects, from, to, newSrc, newDst netip.AddrPort, ifindex int) {
	tb.Helper()
	n, err := ebpf.PossibleCPU()
	if err != nil {
		tb.Fatal(err)
	}
	o := &Offloader{ncpu: n}
	if err := objs.Flows.Update(key(from, to), o.value(newSrc, newDst, ifindex), ebpf.UpdateAny); err != nil {
		tb.Fatal(err)
	}
}

func counters(t *testing.T, objs *fastpathObjects, from, to netip.AddrPort) (packets, bytes uint64) {
	t.Helper()
	var vs []fastpathFlowValue
	if err := objs.Flows.Lookup(key(from, to), &vs); err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		packets += v.Packets
		bytes += v.Bytes
	}
	return packets, bytes
}

func run(t *testing.T, objs *fastpathObjects, in []byte) (uint32, []byte) {
	t.Helper()
	return offloadtest.Run(t, objs.FastpathIngress, in)
}

func TestProgram(t *testing.T) {
	objs := loadObjs(t)
	putFlow(t, objs, tClient, tFixed, tInside, tServer, 3)
	putFlow(t, objs, tServer, tInside, tFixed, tClient, 2)
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
			in := tc.p.Bytes()
			ret, out := run(t, objs, in)
			if ret != actRedirect {
				t.Fatalf("returned %d, want TC_ACT_REDIRECT", int32(ret))
			}
			checkRewritten(t, in, out, tc.src, tc.dst, tc.p.NoCsum)
		})
	}

	passes := []struct {
		name string
		p    pkt
	}{
		{"map miss: other source port", pkt{Src: netip.AddrPortFrom(tClient.Addr(), 4001), Dst: tFixed, Payload: payload}},
		{"map miss: other destination", pkt{Src: tClient, Dst: netip.AddrPortFrom(tFixed.Addr(), 7002), Payload: payload}},
		{"map miss: reply direction of the rewrite", pkt{Src: tInside, Dst: tServer, Payload: payload}},
		{"TCP", pkt{Src: tClient, Dst: tFixed, Proto: 6, Payload: payload}},
		{"ICMP", pkt{Src: tClient, Dst: tFixed, Proto: 1, Payload: payload}},
		{"first fragment (MF)", pkt{Src: tClient, Dst: tFixed, FragOff: 0x2000, Payload: payload}},
		{"later fragment (offset)", pkt{Src: tClient, Dst: tFixed, FragOff: 0x0010, Payload: payload}},
		{"IP options", pkt{Src: tClient, Dst: tFixed, IHL: 6, Payload: payload}},
		{"TTL 1", pkt{Src: tClient, Dst: tFixed, TTL: 1, Payload: payload}},
		{"IPv6 ethertype", pkt{Src: tClient, Dst: tFixed, EthType: 0x86dd, Payload: payload}},
		{"ARP ethertype", pkt{Src: tClient, Dst: tFixed, EthType: 0x0806, Payload: payload}},
		{"truncated inside the UDP header", pkt{Src: tClient, Dst: tFixed, Truncate: 4}},
		{"truncated after the IP header", pkt{Src: tClient, Dst: tFixed, Truncate: 8}},
		{"truncated payload (IP length beyond the packet)", pkt{Src: tClient, Dst: tFixed, Payload: payload, Truncate: 10}},
		{"IP length shorter than the headers", pkt{Src: tClient, Dst: tFixed, Payload: payload, TotLenAdd: -190}},
		// (BPF_PROG_TEST_RUN itself refuses an IPv4 ethertype without a full
		// IP header, so the shortest frame carries another type.)
		{"Ethernet header only", pkt{Src: tClient, Dst: tFixed, EthType: 0x88b5, Truncate: 28}},
	}
	before, _ := counters(t, objs, tClient, tFixed)
	for _, tc := range passes {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.p.Bytes()
			ret, out := run(t, objs, in)
			if ret != actUnspec {
				t.Fatalf("returned %d, want TC_ACT_UNSPEC (pass)", int32(ret))
			}
			if !bytes.Equal(out, in) {
				t.Errorf("packet changed:\n got %x\nwant %x", out, in)
			}
		})
	}
	if after, _ := counters(t, objs, tClient, tFixed); after != before {
		t.Errorf("passed packets counted: %d -> %d", before, after)
	}
}

// TestProgramCounters: each forwarded packet adds one packet and its IP
// length to its own direction's entry.
func TestProgramCounters(t *testing.T) {
	objs := loadObjs(t)
	putFlow(t, objs, tClient, tFixed, tInside, tServer, 3)
	putFlow(t, objs, tServer, tInside, tFixed, tClient, 2)
	var wantIn, wantOut uint64
	for i := range 10 {
		p := pkt{Src: tClient, Dst: tFixed, Payload: make([]byte, 160+i)}
		if i%3 == 0 {
			p.Src, p.Dst = tServer, tInside
		}
		in := p.Bytes()
		if ret, _ := run(t, objs, in); ret != actRedirect {
			t.Fatalf("packet %d returned %d", i, int32(ret))
		}
		if i%3 == 0 {
			wantOut += uint64(len(in) - 14)
		} else {
			wantIn += uint64(len(in) - 14)
		}
	}
	// A trailing pad beyond the IP length is not counted.
	in := pkt{Src: tClient, Dst: tFixed, Payload: make([]byte, 100), TotLenAdd: -4}.Bytes()
	if ret, _ := run(t, objs, in); ret != actRedirect {
		t.Fatalf("padded packet returned %d", int32(ret))
	}
	wantIn += uint64(len(in) - 14 - 4)
	if p, b := counters(t, objs, tClient, tFixed); p != 7 || b != wantIn {
		t.Errorf("client->fixed counted %d packets %d bytes, want 7 and %d", p, b, wantIn)
	}
	if p, b := counters(t, objs, tServer, tInside); p != 4 || b != wantOut {
		t.Errorf("server->inside counted %d packets %d bytes, want 4 and %d", p, b, wantOut)
	}
}

// TestProgramChecksumsRandom rewrites random flows and payloads and checks
// both checksums against a recomputation, covering carries and the
// 0x0000/0xffff corner of the UDP checksum.
func TestProgramChecksumsRandom(t *testing.T) {
	objs := loadObjs(t)
	r := rand.New(rand.NewPCG(1, 2))
	ap := func() netip.AddrPort { return offloadtest.RandomAddrPort(r) }
	for i := range 300 {
		from, to, nsrc, ndst := ap(), ap(), ap(), ap()
		putFlow(t, objs, from, to, nsrc, ndst, 1)
		payload := offloadtest.RandomPayload(r, 300)
		p := pkt{Src: from, Dst: to, Payload: payload, TTL: byte(2 + r.IntN(250)), NoCsum: i%10 == 0}
		in := p.Bytes()
		ret, out := run(t, objs, in)
		if ret != actRedirect {
			t.Fatalf("case %d returned %d", i, int32(ret))
		}
		checkRewritten(t, in, out, nsrc, ndst, p.NoCsum)
		if err := objs.Flows.Delete(key(from, to)); err != nil {
			t.Fatal(err)
		}
		if t.Failed() {
			t.Fatalf("case %d: %v -> %v rewritten to %v -> %v", i, from, to, nsrc, ndst)
		}
	}
}

// BenchmarkProgram is the program's own cost per forwarded packet, as
// BPF_PROG_TEST_RUN measures it (lookup, rewrite, seven checksum helper
// calls, counters, bpf_redirect_neigh setting the target; not the
// transmission). Two entries map the flow's rewritten tuple back to the
// original, so repeated runs over the same skb keep hitting; each batch
// stops before the TTL runs out.
func BenchmarkProgram(b *testing.B) {
	objs := loadObjs(b)
	putFlow(b, objs, tClient, tFixed, tInside, tServer, 1)
	putFlow(b, objs, tInside, tServer, tClient, tFixed, 1)
	in := pkt{Src: tClient, Dst: tFixed, TTL: 255, Payload: make([]byte, 160)}.Bytes()
	offloadtest.Benchmark(b, objs.FastpathIngress, in)
}

// FuzzProgram runs arbitrary frames through the program with one flow
// installed. A frame it hands on must come out byte for byte unchanged; a
// frame it redirects must be the installed flow's, keep its length and
// payload, carry the rewritten addresses and ports, and keep a valid IP
// header checksum valid.
func FuzzProgram(f *testing.F) {
	objs := loadObjs(f)
	putFlow(f, objs, tClient, tFixed, tInside, tServer, 1)
	payload := make([]byte, 40)
	for _, p := range []pkt{
		{Src: tClient, Dst: tFixed, Payload: payload},
		{Src: tClient, Dst: tFixed, Payload: payload, NoCsum: true},
		{Src: tClient, Dst: tFixed, TTL: 1},
		{Src: tClient, Dst: tFixed, IHL: 6, Payload: payload},
		{Src: tClient, Dst: tFixed, FragOff: 0x2000, Payload: payload},
		{Src: tServer, Dst: tInside, Payload: payload},
		{Src: tClient, Dst: tFixed, Payload: payload, Truncate: 20},
	} {
		f.Add(p.Bytes())
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, ok := offloadtest.Redirected(t, objs.FastpathIngress, in)
		if !ok {
			return
		}
		if len(in) < 42 || len(out) != len(in) {
			t.Fatalf("redirected a %d-byte frame (out %d bytes)", len(in), len(out))
		}
		if from, to := offloadtest.Tuple(in); key(from, to) != key(tClient, tFixed) {
			t.Fatalf("redirected a frame of another flow: %x", in)
		}
		if !bytes.Equal(out[:22], in[:22]) || out[22] != in[22]-1 || out[23] != in[23] {
			t.Errorf("Ethernet or IP header changed beyond TTL, checksum, addresses")
		}
		if !bytes.Equal(out[42:], in[42:]) || !bytes.Equal(out[38:40], in[38:40]) {
			t.Errorf("UDP length or payload changed")
		}
		if src, dst := offloadtest.Tuple(out); src != tInside || dst != tServer {
			t.Errorf("rewritten to %v -> %v", src, dst)
		}
		if offloadtest.Fold(offloadtest.Sum(0, in[14:34])) == 0xffff && offloadtest.Fold(offloadtest.Sum(0, out[14:34])) != 0xffff {
			t.Errorf("valid IP header checksum made invalid")
		}
	})
}
