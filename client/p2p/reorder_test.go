package p2p

import (
	"testing"
	"time"
)

func seqs(ps [][]byte) []byte {
	var out []byte
	for _, p := range ps {
		out = append(out, p[0])
	}
	return out
}

func TestReorderBuf(t *testing.T) {
	t0 := time.Unix(0, 0)
	hold := 40 * time.Millisecond
	var r reorderBuf
	r.init()
	if got := seqs(r.push(10, []byte{10}, t0, hold)); string(got) != "\x0a" {
		t.Fatalf("first: %v", got)
	}
	// 12 and 13 wait for 11.
	if got := r.push(12, []byte{12}, t0, hold); len(got) != 0 {
		t.Fatalf("12 delivered early: %v", seqs(got))
	}
	r.push(13, []byte{13}, t0, hold)
	if got := seqs(r.push(11, []byte{11}, t0.Add(time.Millisecond), hold)); string(got) != "\x0b\x0c\x0d" {
		t.Fatalf("after 11: %v", got)
	}
	// A duplicate of a delivered one is late.
	r.push(12, []byte{12}, t0, hold)
	if r.late != 1 {
		t.Fatalf("late %d", r.late)
	}
	// 15 waits; the hold expires; 14 is lost; 14 arriving later is late.
	r.push(15, []byte{15}, t0.Add(2*time.Millisecond), hold)
	if got := r.expire(t0.Add(10*time.Millisecond), hold); len(got) != 0 {
		t.Fatalf("expired early: %v", seqs(got))
	}
	if got := seqs(r.expire(t0.Add(50*time.Millisecond), hold)); string(got) != "\x0f" || r.lost != 1 {
		t.Fatalf("expire: %v lost %d", got, r.lost)
	}
	r.push(14, []byte{14}, t0.Add(60*time.Millisecond), hold)
	if r.late != 2 {
		t.Fatalf("late %d", r.late)
	}
	// A full buffer gives up on the gap at once.
	now := t0.Add(time.Second)
	var out [][]byte
	for s := uint64(17); s < 17+maxReorder; s++ {
		out = append(out, r.push(s, []byte{byte(s)}, now, hold)...)
	}
	if len(out) != maxReorder || r.lost != 2 || len(r.held) != 0 {
		t.Fatalf("overflow: delivered %d lost %d held %d", len(out), r.lost, len(r.held))
	}
}
