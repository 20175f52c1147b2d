package main

import (
	"encoding/binary"
	"testing"
)

func answer(prefix [4]byte, seq uint64, attrs int) []byte {
	b := make([]byte, 20+attrs)
	binary.BigEndian.PutUint16(b[0:], 0x0101)
	binary.BigEndian.PutUint16(b[2:], uint16(attrs))
	binary.BigEndian.PutUint32(b[4:], magicCookie)
	copy(b[8:12], prefix[:])
	binary.BigEndian.PutUint64(b[12:], seq)
	return b
}

func TestCount(t *testing.T) {
	p := [4]byte{1, 2, 3, 4}
	cat := func(bs ...[]byte) []byte {
		var out []byte
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		b    []byte
		gro  bool
		want int
	}{
		{"one", answer(p, 5, 12), false, 1},
		{"other prefix", answer([4]byte{9}, 5, 12), false, 0},
		{"stale seq", answer(p, 1, 12), false, 0},
		{"short", answer(p, 5, 12)[:19], false, 0},
		{"merged read without gro counts one", cat(answer(p, 5, 12), answer(p, 6, 12)), false, 1},
		{"merged by gro", cat(answer(p, 5, 12), answer(p, 6, 12), answer(p, 7, 12)), true, 3},
		{"merged, one stale", cat(answer(p, 5, 20), answer(p, 99, 20), answer(p, 7, 20)), true, 2},
		{"length overruns", cat(answer(p, 5, 12), answer(p, 6, 12)[:25]), true, 2},
	} {
		if got := count(tc.b, tc.gro, p, 5, 10); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}
