package relay

import (
	"math"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
)

func TestSeqWindow(t *testing.T) {
	const top = math.MaxUint32 - 10 // the cases that cross it wrap
	for _, c := range []struct {
		name string
		seqs []uint32
		want []seqVerdict // verdict of each
	}{
		{"in order", []uint32{1, 2, 3}, []seqVerdict{seqNew, seqNew, seqNew}},
		{"repeat of the highest", []uint32{5, 5}, []seqVerdict{seqNew, seqDup}},
		{"reordered, then repeated", []uint32{10, 12, 11, 11, 12, 10}, []seqVerdict{seqNew, seqNew, seqNew, seqDup, seqDup, seqDup}},
		{"the oldest still checked, then one below: a restart",
			[]uint32{5000, 5000 - SeqWindow + 1, 5000 - SeqWindow + 1, 5000 - SeqWindow},
			[]seqVerdict{seqNew, seqNew, seqDup, seqReset}},
		{"a gap below the highest is still open", []uint32{100, 100 + 500, 300, 300}, []seqVerdict{seqNew, seqNew, seqNew, seqDup}},
		{"a jump ahead beyond the ring clears it", []uint32{7, 7 + 5000, 7, 7 + 5000}, []seqVerdict{seqNew, seqNew, seqReset, seqNew}},
		{"across the wrap", []uint32{top, top + 5, 2, top + 3, top + 5, 2, top},
			[]seqVerdict{seqNew, seqNew, seqNew, seqNew, seqDup, seqDup, seqDup}},
		{"the wrap: 0 after 2^32-1", []uint32{math.MaxUint32, 0, math.MaxUint32, 0}, []seqVerdict{seqNew, seqNew, seqDup, seqDup}},
		{"publisher restart: numbering again from 1, then duplicates of the new run",
			[]uint32{90000, 90001, 1, 2, 1, 2, 3}, []seqVerdict{seqNew, seqNew, seqReset, seqNew, seqDup, seqDup, seqNew}},
		{"a restart above: an ordinary jump", []uint32{200, 201, 1 << 20, 1<<20 + 1, 201}, []seqVerdict{seqNew, seqNew, seqNew, seqNew, seqReset}},
		{"word boundaries", []uint32{63, 64, 127, 128, 64, 63, 128}, []seqVerdict{seqNew, seqNew, seqNew, seqNew, seqDup, seqDup, seqDup}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var w seqWindow
			for i, s := range c.seqs {
				if got := w.check(s); got != c.want[i] {
					t.Fatalf("seq %d (#%d): verdict %d, want %d", s, i, got, c.want[i])
				}
			}
		})
	}
}

// TestSeqWindowsBounded: windows are made per stream (source, layer,
// track), swept when idle, forgotten with their track, and no more than
// MaxSeqStreams are held: beyond, messages pass unchecked.
func TestSeqWindowsBounded(t *testing.T) {
	var ws seqWindows
	now := time.Now()
	h := relaywire.Header{Source: 1, Seq: 7, Room: []byte("r"), Publisher: []byte("p"), Track: []byte("t")}
	if v, _ := ws.check(&h, now); v != seqNew {
		t.Fatal(v)
	}
	for _, other := range []func(*relaywire.Header){
		func(h *relaywire.Header) { h.Source = 2 },
		func(h *relaywire.Header) { h.Layer = 1 },
		func(h *relaywire.Header) { h.Track = []byte("u") },
	} {
		o := h
		other(&o)
		if v, _ := ws.check(&o, now); v != seqNew {
			t.Fatalf("another stream's seq 7: %d", v)
		}
	}
	if v, _ := ws.check(&h, now); v != seqDup {
		t.Fatal(v)
	}
	if ws.len() != 4 {
		t.Fatalf("%d windows, want 4", ws.len())
	}
	ws.forget(string(forwardKey(nil, "r", "p", "t")))
	if ws.len() != 1 {
		t.Fatalf("%d windows after forgetting r/p/t, want 1 (r/p/u)", ws.len())
	}
	ws.sweep(now.Add(time.Nanosecond))
	if ws.len() != 0 {
		t.Fatalf("%d windows after the sweep", ws.len())
	}
	for i := 0; i < MaxSeqStreams; i++ {
		o := h
		o.Source = NodeID(i + 1)
		if _, full := ws.check(&o, now); full {
			t.Fatalf("full at %d", i)
		}
	}
	o := h
	o.Source = MaxSeqStreams + 1
	if _, full := ws.check(&o, now); !full || ws.len() != MaxSeqStreams {
		t.Fatalf("full %v with %d windows", full, ws.len())
	}
}

// TestSeqWindowAllocs: checking a message of a known stream allocates
// nothing.
func TestSeqWindowAllocs(t *testing.T) {
	var ws seqWindows
	now := time.Now()
	h := relaywire.Header{Source: 1, Room: []byte("standup"), Publisher: []byte("alice"), Track: []byte("TR_video")}
	ws.check(&h, now)
	if a := testing.AllocsPerRun(1000, func() {
		h.Seq++
		ws.check(&h, now)
	}); a != 0 {
		t.Fatalf("%v allocations per check", a)
	}
}

// FuzzSeqWindow drives a window with arbitrary sequence numbers against
// a model that remembers every number: the window never calls a number it
// has not accepted a duplicate, and never accepts twice a number within
// SeqWindow of the highest unless a restart intervened.
func FuzzSeqWindow(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		var w seqWindow
		seen := map[uint32]bool{}
		var top uint32
		for i := 0; i+4 <= len(b); i += 4 {
			s := uint32(b[i])<<24 | uint32(b[i+1])<<16 | uint32(b[i+2])<<8 | uint32(b[i+3])
			v := w.check(s)
			switch v {
			case seqReset:
				seen = map[uint32]bool{s: true}
				top = s
			case seqDup:
				if !seen[s] {
					t.Fatalf("%d called a duplicate, not accepted within the window", s)
				}
			case seqNew:
				if seen[s] {
					t.Fatalf("%d accepted twice", s)
				}
				seen[s] = true
				if len(seen) == 1 || int32(s-top) > 0 {
					top = s
				}
			}
			// the model keeps what the window must still know: the
			// numbers within SeqWindow below the highest
			for x := range seen {
				if d := int32(top - x); d < 0 || d >= SeqWindow {
					delete(seen, x)
				}
			}
			if w.top != top {
				t.Fatalf("window top %d, model %d", w.top, top)
			}
		}
	})
}

// BenchmarkSeqWindowCheck is the duplicate check a destination adds per
// media message: the key, the map lookup under the lock, the window.
func BenchmarkSeqWindowCheck(b *testing.B) {
	var ws seqWindows
	now := time.Now()
	h := relaywire.Header{Source: 1, Room: []byte("standup"), Publisher: []byte("alice"), Track: []byte("TR_video")}
	b.ReportAllocs()
	for b.Loop() {
		h.Seq++
		ws.check(&h, now)
	}
}
