package relay

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
)

// TestHopPayloadsAcrossRuns: a relay hop seals its read batch's frames at
// the batch's end from the payloads it opened (no copy per next hop), so
// those payloads must outlive the runs of frames opened after them (rxRun
// frames each) and the slab's half-full dispatch. B handles 100 frames of
// distinct 1,000-byte payloads from A, each for C and a second next hop,
// as one read batch; every frame it queued opens at its next hop to the
// payload A sent.
func TestHopPayloadsAcrossRuns(t *testing.T) {
	const frames, fan = 60, 2 // 120 frames out: under the loop's queue of loopOut
	e, _ := hopBench(t, false, fan)
	al, _ := relaywire.NewLink(secret, nA, nB, 1)
	h := &relaywire.Header{Kind: relaywire.KindMedia, HopLimit: 8, Source: nA, NDst: fan,
		Room: []byte("standup"), Publisher: []byte("alice"), Track: []byte("TR_video")}
	h.Dst[0], h.Dst[1] = nC, 101
	payload := func(i int) []byte { return bytes.Repeat([]byte{byte(i + 1)}, 1000) }
	from := netip.MustParseAddrPort("127.0.0.1:9")
	for i := 0; i < frames; i++ {
		h.Seq = uint32(i + 1)
		msg, _ := relaywire.AppendHeader(nil, h)
		f := al.Seal(nil, relaywire.TypeData, relaywire.AppendData(nil, uint32(i+1), append(msg, payload(i)...)))
		e.handleFrame(f, from, e.loop)
	}
	e.releaseRx(e.loop)
	e.sealPending(e.loop)
	out := &e.loop.out
	if out.n != frames*fan {
		t.Fatalf("%d frames queued, want %d", out.n, frames*fan)
	}
	links := map[NodeID]*relaywire.Link{}
	got := map[NodeID]int{}
	for i := range out.msgs[:out.n] {
		f := append([]byte(nil), out.msgs[i].Payload()...)
		lh, err := relaywire.ParseLinkHeader(f)
		if err != nil {
			t.Fatal(err)
		}
		var to NodeID
		for id, p := range *e.peers.Load() {
			if p.addr == out.msgs[i].Addr {
				to = id
			}
		}
		l := links[to]
		if l == nil {
			l, _ = relaywire.NewLink(secret, to, nB, 1)
			links[to] = l
		}
		_, body, err := l.Open(f)
		if err != nil {
			t.Fatalf("frame %d to %d (counter %d): %v", i, to, lh.Counter, err)
		}
		_, m, _ := relaywire.ParseData(body)
		var mh relaywire.Header
		p, err := relaywire.ParseHeader(m, &mh)
		if err != nil {
			t.Fatal(err)
		}
		if want := payload(int(mh.Seq) - 1); !bytes.Equal(p, want) {
			t.Fatalf("message %d to %d: payload of %d bytes starting %x, want %x...", mh.Seq, to, len(p), p[:min(len(p), 4)], want[:4])
		}
		got[to]++
	}
	if got[nC] != frames || got[101] != frames {
		t.Fatalf("frames per next hop %v, want %d each", got, frames)
	}
	e.loop.out.n = 0
}
