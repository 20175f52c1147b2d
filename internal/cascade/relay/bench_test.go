package relay

import (
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// hopBench is node B of A -> B -> C without its read loop: the benchmark
// hands B's frame handler frames A sealed, and B forwards them to C (a
// socket that drains) through its batched send path. With holder the
// frames are addressed to B, which holds the track and forwards it to C
// (SetForward) without a subscriber of its own. With fan > 1 each frame is
// addressed to C and fan-1 more next hops (nodes 100..., on addresses
// nothing listens at: for the benchmarks without the send).
func hopBench(tb testing.TB, holder bool, fan int) (b *Endpoint, seal func(dst []byte) []byte) {
	lo := netip.MustParseAddrPort("127.0.0.1:0")
	c := testkit.ListenUDP(tb, lo)
	testkit.Silent(tb, c, "node C")
	e, err := New(Config{Node: nB, Listen: lo, Secret: secret, Epoch: 1, Local: &sfu{}, Registry: prometheus.NewRegistry()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e.Close() })
	aAddr := netip.MustParseAddrPort("127.0.0.1:9") // never sent to
	peers := map[NodeID]netip.AddrPort{nA: aAddr, nC: c.LocalAddr().(*net.UDPAddr).AddrPort()}
	routes := map[NodeID]NodeID{nA: nA, nC: nC}
	h := &relaywire.Header{Kind: relaywire.KindMedia, HopLimit: 8, Source: nA, NDst: uint8(fan),
		Room: []byte("standup"), Publisher: []byte("alice"), Track: []byte("TR_video")}
	h.Dst[0] = nC
	for i := 1; i < fan; i++ {
		id := NodeID(100 + i)
		peers[id] = netip.AddrPortFrom(aAddr.Addr(), uint16(10+i))
		routes[id] = id
		h.Dst[i] = id
	}
	if err := e.SetPeers(peers); err != nil {
		tb.Fatal(err)
	}
	e.SetRoutes(1, routes)
	al, _ := relaywire.NewLink(secret, nA, nB, 1)
	if holder {
		h.Dst[0] = nB
		if err := e.SetForward(StreamKey{Room: "standup", Publisher: "alice", Track: "TR_video"}, []NodeID{nC}, false); err != nil {
			tb.Fatal(err)
		}
	}
	msg, _ := relaywire.AppendHeader(nil, h)
	msg = append(msg, make([]byte, 1000)...)
	var seq uint32
	body := make([]byte, 0, 2048)
	return e, func(dst []byte) []byte {
		seq++
		binary.BigEndian.PutUint32(msg[12:], seq) // the end-to-end sequence: a new message each time
		body = relaywire.AppendData(body[:0], seq, msg)
		return al.Seal(dst, relaywire.TypeData, body)
	}
}

// BenchmarkRelayHop is the per-packet cost of one relay hop at node B:
// parse, authenticate and decrypt A's frame, the replay window, the
// link's recovery bookkeeping, route lookup, re-encode the relay header,
// number and FEC-track it on the B-C link, seal it for C, and send it
// (sendmmsg, 64 per call). The receive system call is not included.
func BenchmarkRelayHop(b *testing.B) { benchHop(b, true, false, 1) }

// BenchmarkRelayHolder is BenchmarkRelayHop at a holder: the message is
// addressed to B, which holds the track for C without subscribers of its
// own (SetForward) and sends it on: the lookup of the track's forward
// and a second routing pass.
func BenchmarkRelayHolder(b *testing.B) { benchHop(b, true, true, 1) }

// BenchmarkRelayHopNoSend is BenchmarkRelayHop without the sendmmsg: the
// queued frames are discarded, as the SFU's BenchmarkRecvPath and
// BenchmarkOwnPathWrite do, for a like-for-like comparison.
func BenchmarkRelayHopNoSend(b *testing.B) { benchHop(b, false, false, 1) }

// BenchmarkRelayHopNoSend8 is BenchmarkRelayHopNoSend with each message
// for 8 next hops: against it, the user-space cost of one more next hop
// per packet in ((ns8 - ns1) / 7: header, numbering, FEC history, seal).
func BenchmarkRelayHopNoSend8(b *testing.B) { benchHop(b, false, false, 8) }

func benchHop(b *testing.B, send, holder bool, fan int) {
	e, seal := hopBench(b, holder, fan)
	const chunk = 1024
	frames := make([][]byte, chunk)
	for i := range frames {
		frames[i] = make([]byte, 0, 2048)
	}
	from := netip.MustParseAddrPort("127.0.0.1:9")
	flush := func() {
		e.releaseRx(e.loop)
		e.sealPending(e.loop)
		if send {
			e.flush(&e.loop.out)
		} else {
			e.loop.out.n = 0
		}
	}
	b.ReportAllocs()
	b.SetBytes(1000)
	b.ResetTimer()
	for done := 0; done < b.N; {
		b.StopTimer()
		n := min(chunk, b.N-done)
		for i := 0; i < n; i++ {
			frames[i] = seal(frames[i][:0])
		}
		b.StartTimer()
		for i := 0; i < n; i++ {
			e.handleFrame(frames[i], from, e.loop)
			if per := udpio64 / fan; i%per == per-1 { // a full batch of frames out
				flush()
			}
		}
		flush()
		done += n
	}
	b.StopTimer()
	if metricValue(e.m.forwarded) < float64(b.N*fan) {
		b.Fatalf("forwarded %v of %d", metricValue(e.m.forwarded), b.N*fan)
	}
}

func metricValue(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

const udpio64 = 64

func TestRelayHopAllocs(t *testing.T) {
	for _, holder := range []bool{false, true} {
		t.Run(map[bool]string{false: "hop", true: "holder"}[holder], func(t *testing.T) { relayHopAllocs(t, holder) })
	}
}

func relayHopAllocs(t *testing.T, holder bool) {
	e, seal := hopBench(t, holder, 1)
	from := netip.MustParseAddrPort("127.0.0.1:9")
	frame := make([]byte, 0, 2048)
	for i := 0; i < 100; i++ { // warm the pools and the FEC codec cache
		e.handleFrame(seal(frame[:0]), from, e.loop)
		e.endBatch(e.loop)
	}
	frames := make([][]byte, 300)
	for i := range frames {
		frames[i] = seal(nil)
	}
	i := 0
	allocs := testing.AllocsPerRun(200, func() {
		e.handleFrame(frames[i], from, e.loop)
		e.endBatch(e.loop)
		i++
	})
	if allocs > 0.1 {
		t.Fatalf("%.2f allocations per relay hop, want 0", allocs)
	}
	if got := metricValue(e.m.forwarded); got < 300 {
		t.Fatalf("forwarded %v of the 300 frames", got)
	}
}

// TestHopLatency measures the one-way latency from A's Send to C's
// DeliverMedia on loopback, direct (A -> C) and through B (A -> B -> C):
// the difference is what a relay hop adds. The figures are logged; the
// test fails only when a hop adds more than 2 ms at p99 (the goal is
// 200 us; a shared test machine is noisy).
func TestHopLatency(t *testing.T) {
	ns := startNodes(t, nA, nB, nC)
	a, b, c := ns[nA], ns[nB], ns[nC]
	b.e.SetRoutes(1, map[NodeID]NodeID{nA: nA, nC: nC})
	const count = 1000
	var mu sync.Mutex
	var lat []time.Duration
	onMedia := func(rtp []byte) {
		d := time.Since(time.Unix(0, int64(binary.BigEndian.Uint64(rtp))))
		mu.Lock()
		lat = append(lat, d)
		mu.Unlock()
	}
	c.sfu.onMedia.Store(&onMedia)
	if err := a.e.SetNeed(key, []NodeID{nC}); err != nil {
		t.Fatal(err)
	}
	measure := func(route NodeID) (p50, p99 time.Duration) {
		mu.Lock()
		lat = lat[:0]
		mu.Unlock()
		a.e.SetRoutes(1, map[NodeID]NodeID{nB: nB, nC: route})
		rtp := make([]byte, 1000)
		tick := time.NewTicker(500 * time.Microsecond)
		defer tick.Stop()
		for i := 0; i < count; i++ {
			<-tick.C
			binary.BigEndian.PutUint64(rtp, uint64(time.Now().UnixNano()))
			a.e.Send(key, 0, rtp)
		}
		testkit.WaitFor(t, 5*time.Second, "all packets at C", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(lat) >= count*99/100
		})
		mu.Lock()
		defer mu.Unlock()
		s := slices.Clone(lat)
		slices.Sort(s)
		return s[len(s)/2], s[len(s)*99/100]
	}
	d50, d99 := measure(nC)
	h50, h99 := measure(nB)
	if fwd := b.metric(t, "traverse_relay_forwarded_total"); fwd < count*99/100 {
		t.Fatalf("B forwarded %v of %d", fwd, count)
	}
	if fwd := c.metric(t, "traverse_relay_delivered_total"); fwd < 2*count*99/100 {
		t.Fatalf("C delivered %v of %d", fwd, 2*count)
	}
	t.Logf("A->C direct: p50 %v p99 %v; A->B->C: p50 %v p99 %v; added by the hop: p50 %v p99 %v",
		d50, d99, h50, h99, h50-d50, h99-d99)
	if h99-d99 > 2*time.Millisecond {
		t.Fatalf("a relay hop adds %v at p99", h99-d99)
	}
}
