package relay

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/testkit"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

// coalescingPeer is a node the test plays with a socket that coalesces as
// a relay endpoint does (udpio.Options.Coalesce): its batches to one
// address leave as one UDP GSO run, and runs to it arrive as one read.
func coalescingPeer(t *testing.T) *udpio.Conn {
	t.Helper()
	c, err := udpio.Listen(context.Background(), "udp4", "127.0.0.1:0", udpio.Options{Coalesce: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if r, w := c.Coalescing(); !r || !w {
		t.Fatalf("the kernel has no UDP GSO/GRO here (reads %v, writes %v): the relay's batching cannot be tested", r, w)
	}
	return c
}

// peerFrames seals n data frames of A (link sequences from 1) whose media
// messages are for dst, each payload its index in 8 bytes then pad bytes:
// all of one size.
func peerFrames(t *testing.T, n int, dst NodeID) [][]byte {
	t.Helper()
	al, err := relaywire.NewLink(secret, nA, nB, 1)
	if err != nil {
		t.Fatal(err)
	}
	h := &relaywire.Header{Kind: relaywire.KindMedia, HopLimit: 8, Source: nA, NDst: 1,
		Room: []byte(key.Room), Publisher: []byte(key.Publisher), Track: []byte(key.Track)}
	h.Dst[0] = dst
	var frames [][]byte
	for i := range n {
		h.Seq = uint32(i + 1) // each its own media message (the destination's duplicate window)
		msg, _ := relaywire.AppendHeader(nil, h)
		msg = binary.BigEndian.AppendUint64(msg, uint64(i))
		msg = append(msg, make([]byte, 500)...)
		frames = append(frames, al.Seal(nil, relaywire.TypeData, relaywire.AppendData(nil, uint32(i+1), msg)))
	}
	return frames
}

// sendRun sends frames from c to to with one WriteBatch: one UDP GSO run
// when they are of one size.
func sendRun(t *testing.T, c *udpio.Conn, to netip.AddrPort, frames [][]byte) {
	t.Helper()
	out := udpio.NewMessages(len(frames), 0)
	for i, f := range frames {
		out[i].N, out[i].Addr = copy(out[i].Buf, f), to
	}
	if n, err := c.WriteBatch(out); n != len(out) || err != nil {
		t.Fatalf("WriteBatch = %d, %v; want %d", n, err, len(out))
	}
}

// TestRelayCoalescedReadChecksEachFrame: frames of A that arrive as one
// coalesced read (A's batch left as one UDP GSO run, B's socket reads with
// UDP GRO, as every endpoint's does) are opened, checked and delivered
// one by one: a forged frame and a replayed one inside the run are
// dropped and counted, the others delivered in order.
func TestRelayCoalescedReadChecksEachFrame(t *testing.T) {
	a := coalescingPeer(t)
	reg := prometheus.NewRegistry()
	s := &sfu{}
	var mu sync.Mutex
	var got []uint64
	onMedia := func(rtp []byte) {
		mu.Lock()
		got = append(got, binary.BigEndian.Uint64(rtp))
		mu.Unlock()
	}
	s.onMedia.Store(&onMedia)
	e, err := New(Config{Node: nB, Listen: netip.MustParseAddrPort("127.0.0.1:0"), Secret: secret, Epoch: 1, Local: s, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, e.Run)
	b := &node{id: nB, e: e, sfu: s, reg: reg}
	if err := e.SetPeers(map[NodeID]netip.AddrPort{nA: a.LocalAddr()}); err != nil {
		t.Fatal(err)
	}
	frames := peerFrames(t, 5, nB)
	forged := slices.Clone(frames[1])
	forged[len(forged)-1] ^= 1                                                     // the tag
	run := [][]byte{frames[0], forged, frames[2], frames[0], frames[3], frames[4]} // frames[0] again: a replay
	sendRun(t, a, e.Addr(), run)
	testkit.WaitFor(t, 5*time.Second, "the run's good frames delivered", func() bool { return s.media.Load() >= 4 })
	mu.Lock()
	if fmt.Sprint(got) != "[0 2 3 4]" {
		t.Errorf("delivered %v, want [0 2 3 4]", got)
	}
	mu.Unlock()
	for reason, want := range map[string]float64{"auth": 1, "replay": 1} {
		if v := b.metric(t, "traverse_relay_dropped_total", "reason", reason); v != want {
			t.Errorf("dropped{reason=%q} = %v, want %v", reason, v, want)
		}
	}
	if v := b.metric(t, "traverse_relay_coalesced_reads_total"); v != 1 {
		t.Errorf("coalesced reads %v, want 1: the run did not arrive as one read", v)
	}
}

// TestRelayHopSendsOneRunPerNextHop: the batching a relay hop does by
// default (no option turns it on). A's run of frames for C arrives at B as
// one read; B forwards them in one batch, which leaves as one run to C:
// C, reading as an endpoint does, gets them in one read, whole and in
// order.
func TestRelayHopSendsOneRunPerNextHop(t *testing.T) {
	a, c := coalescingPeer(t), coalescingPeer(t)
	e, err := New(Config{Node: nB, Listen: netip.MustParseAddrPort("127.0.0.1:0"), Secret: secret, Epoch: 1, Local: &sfu{}, Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, e.Run)
	if r, w := e.conn.Coalescing(); !r || !w {
		t.Fatalf("an endpoint's socket: coalescing reads %v, writes %v; want both by default", r, w)
	}
	if err := e.SetPeers(map[NodeID]netip.AddrPort{nA: a.LocalAddr(), nC: c.LocalAddr()}); err != nil {
		t.Fatal(err)
	}
	e.SetRoutes(1, map[NodeID]NodeID{nA: nA, nC: nC})
	const n = 6
	sendRun(t, a, e.Addr(), peerFrames(t, n, nC))

	cl, err := relaywire.NewLink(secret, nC, nB, 1)
	if err != nil {
		t.Fatal(err)
	}
	in := udpio.NewMessages(8, udpio.MaxCoalesced)
	var got []uint64
	var seqs []uint32
	dataReads := 0
	_ = c.UDPConn().SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(got) < n {
		k, err := c.ReadBatch(in)
		if err != nil {
			t.Fatalf("C after %d of %d data frames: %v", len(got), n, err)
		}
		for i := range in[:k] {
			data := false
			for f, off := in[i].Datagram(0); len(f) > 0; f, off = in[i].Datagram(off) {
				lh, body, err := cl.Open(f)
				if err != nil {
					t.Fatalf("C cannot open a frame of B's (%d bytes): %v", len(f), err)
				}
				if lh.Type != relaywire.TypeData {
					continue // probes, parity
				}
				data = true
				seq, msg, err := relaywire.ParseData(body)
				if err != nil {
					t.Fatal(err)
				}
				var h relaywire.Header
				p, err := relaywire.ParseHeader(msg, &h)
				if err != nil {
					t.Fatal(err)
				}
				seqs = append(seqs, seq)
				got = append(got, binary.BigEndian.Uint64(p))
			}
			if data {
				dataReads++
			}
		}
	}
	if fmt.Sprint(got) != "[0 1 2 3 4 5]" || !slices.IsSorted(seqs) {
		t.Fatalf("C got messages %v with link sequences %v, want [0 1 2 3 4 5] in order", got, seqs)
	}
	if dataReads != 1 {
		t.Fatalf("C read the %d forwarded frames in %d reads, want 1 (one run from B)", n, dataReads)
	}
}

// TestDeliveryMaySendBack: the reader loop opens a run of frames from one
// peer under that peer's locks and routes what they carried only once it
// released them, so a delivery that sends back to the same peer at once
// (an SFU asking for a keyframe as media arrives) does not deadlock the
// loop. A sends bursts of media to B, whose every delivery sends feedback
// to A through A's link.
func TestDeliveryMaySendBack(t *testing.T) {
	ns := startNodes(t, nA, nB)
	a, b := ns[nA], ns[nB]
	a.e.SetRoutes(1, map[NodeID]NodeID{nB: nB})
	b.e.SetRoutes(1, map[NodeID]NodeID{nA: nA})
	back := func([]byte) {
		if err := b.e.SendFeedback(key, 0, nA, []byte("pli")); err != nil {
			t.Error(err)
		}
	}
	b.sfu.onMedia.Store(&back)
	if err := a.e.SetNeed(key, []NodeID{nB}); err != nil {
		t.Fatal(err)
	}
	const count = 200
	rtp := make([]byte, 1000)
	for i := 0; i < count; i++ { // back to back: B's reads hold several of A's frames
		a.e.Send(key, 0, rtp)
	}
	testkit.WaitFor(t, 10*time.Second, "A gets feedback for what B received", func() bool {
		return b.sfu.media.Load() >= count*9/10 && a.sfu.feedback.Load() >= b.sfu.media.Load()
	})
}
