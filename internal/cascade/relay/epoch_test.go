package relay

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestEpochRotationUnderTraffic: A streams to B while the key epoch is
// stepped twice, the receiver rotating first once and the sender first
// the other time, each overlap ended by RetireEpoch on both: B receives
// every packet, none is dropped for its epoch, none is lost.
func TestEpochRotationUnderTraffic(t *testing.T) {
	a, b := streamAB(t)
	const count = 4000
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(time.Millisecond)
		defer tk.Stop()
		rtp := make([]byte, 600)
		for i := 0; i < count; i += 4 {
			for j := 0; j < 4; j++ {
				a.e.Send(key, 0, rtp)
			}
			<-tk.C
		}
	}()
	t.Cleanup(func() { <-done })
	atLeast := func(n int64) {
		t.Helper()
		testkit.WaitFor(t, 10*time.Second, "B to receive more", func() bool { return b.sfu.media.Load() >= n })
	}
	step := func(first, second *node, epoch uint16, at int64) {
		t.Helper()
		atLeast(at)
		if err := first.e.SetEpoch(epoch); err != nil {
			t.Fatal(err)
		}
		atLeast(at + 300)
		if err := second.e.SetEpoch(epoch); err != nil {
			t.Fatal(err)
		}
		atLeast(at + 600)
		a.e.RetireEpoch()
		b.e.RetireEpoch()
	}
	step(b, a, 2, 500)  // the receiver first: it opens A's old epoch
	step(a, b, 3, 2000) // the sender first: B opens the epoch after its own
	atLeast(count)
	<-done
	if got := b.sfu.media.Load(); got != count {
		t.Fatalf("B received %d of %d", got, count)
	}
	for _, n := range []*node{a, b} {
		if d := n.metric(t, "traverse_relay_dropped_total", "reason", "epoch"); d != 0 {
			t.Fatalf("node %d dropped %v frames for their epoch during the rotations", n.id, d)
		}
		if l := n.metric(t, "traverse_relay_lost_total"); l != 0 {
			t.Fatalf("node %d lost %v messages", n.id, l)
		}
	}
}

// TestEpochRetiredAndReplay: a frame accepted under epoch 1 and replayed
// after the rotation to 2 is refused as a replay (the window spans
// epochs); once the overlap ends, any frame under epoch 1 is refused for
// its epoch and counted, while epoch 2 (and 3, a peer that rotated first)
// still pass.
func TestEpochRetiredAndReplay(t *testing.T) {
	ns := startNodes(t, nB)
	b := ns[nB]
	const x NodeID = 9
	xc := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	if err := b.e.SetPeers(map[NodeID]netip.AddrPort{x: xc.LocalAddr().(*net.UDPAddr).AddrPort()}); err != nil {
		t.Fatal(err)
	}
	link := func(epoch uint16) *attacker {
		l, err := relaywire.NewLink(secret, x, nB, epoch)
		if err != nil {
			t.Fatal(err)
		}
		return &attacker{conn: xc, link: l}
	}
	hdr := &relaywire.Header{Kind: relaywire.KindMedia, HopLimit: 8, Source: x, NDst: 1,
		Room: []byte("r"), Publisher: []byte("p"), Track: []byte("t")}
	hdr.Dst[0] = nB
	send := func(f []byte) {
		t.Helper()
		if _, err := xc.WriteToUDPAddrPort(f, b.e.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	delivered := func(n int64) {
		t.Helper()
		testkit.WaitFor(t, 5*time.Second, "delivery", func() bool { return b.sfu.media.Load() == n })
	}
	dropped := func(reason string, n float64) {
		t.Helper()
		testkit.WaitFor(t, 5*time.Second, "a drop for "+reason, func() bool {
			return b.metric(t, "traverse_relay_dropped_total", "reason", reason) == n
		})
	}
	x1 := link(1)
	old := x1.frame(t, hdr, []byte("m"))
	send(append([]byte(nil), old...))
	delivered(1)

	if err := b.e.SetEpoch(2); err != nil {
		t.Fatal(err)
	}
	send(append([]byte(nil), old...)) // replay across the rotation
	dropped("replay", 1)
	send(x1.frame(t, hdr, []byte("m"))) // epoch 1 in the overlap: accepted
	delivered(2)

	b.e.RetireEpoch()
	send(x1.frame(t, hdr, []byte("m"))) // epoch 1 after the overlap
	dropped("epoch", 1)
	send(append([]byte(nil), old...)) // the old replay: refused for its epoch
	dropped("epoch", 2)
	x2 := link(2)
	x2.seq = x1.seq
	send(x2.frame(t, hdr, []byte("m")))
	delivered(3)
	x3 := link(3)
	x3.seq = x2.seq
	send(x3.frame(t, hdr, []byte("m"))) // a peer that rotated first
	delivered(4)

	// a link made during an overlap opens the previous epoch as well
	if err := b.e.SetEpoch(3); err != nil {
		t.Fatal(err)
	}
	yc := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	const y NodeID = 10
	if err := b.e.SetPeers(map[NodeID]netip.AddrPort{x: xc.LocalAddr().(*net.UDPAddr).AddrPort(),
		y: yc.LocalAddr().(*net.UDPAddr).AddrPort()}); err != nil {
		t.Fatal(err)
	}
	yl, _ := relaywire.NewLink(secret, y, nB, 2)
	hy := *hdr
	hy.Source = y
	msg, _ := relaywire.AppendHeader(nil, &hy)
	if _, err := yc.WriteToUDPAddrPort(yl.Seal(nil, relaywire.TypeData, relaywire.AppendData(nil, 1, append(msg, 'm'))), b.e.Addr()); err != nil {
		t.Fatal(err)
	}
	delivered(5)
}
