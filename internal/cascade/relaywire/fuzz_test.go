package relaywire

import (
	"bytes"
	"testing"
)

func FuzzLinkHeader(f *testing.F) {
	f.Add(AppendLinkHeader(nil, LinkHeader{Type: TypeData, Epoch: 1, Sender: 2, Counter: 3}))
	f.Add([]byte{Magic, Version << 4})
	f.Add([]byte{Magic, 1<<4 | byte(TypeData), 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3}) // version 1
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseLinkHeader(b)
		if err != nil {
			return
		}
		if out := AppendLinkHeader(nil, h); !bytes.Equal(out, b[:LinkHeaderLen]) {
			t.Fatalf("round trip %x -> %x", b[:LinkHeaderLen], out)
		}
	})
}

func FuzzHeader(f *testing.F) {
	b, _ := AppendHeader(nil, sampleHeader())
	f.Add(append(b, 0x80, 0x60))
	f.Add([]byte{1, 1, 0, 1, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		var h Header
		p, err := ParseHeader(b, &h)
		if err != nil {
			return
		}
		out, err := AppendHeader(nil, &h)
		if err != nil {
			t.Fatalf("parsed header does not encode: %v", err)
		}
		if !bytes.Equal(append(out, p...), b) {
			t.Fatalf("round trip differs")
		}
	})
}

func FuzzParity(f *testing.F) {
	b, _ := AppendParity(nil, &Parity{Base: 1, K: 3, M: 1, Shard: []byte{1, 2}})
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Parity
		if ParseParity(b, &p) != nil {
			return
		}
		out, err := AppendParity(nil, &p)
		if err != nil || !bytes.Equal(out[:7], b[:7]) || out[7] != 0 || !bytes.Equal(out[8:], b[8:]) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

func FuzzNack(f *testing.F) {
	b, _ := AppendNack(nil, []uint32{1, 2, 3})
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseNack(b, nil)
		if err != nil {
			return
		}
		out, err := AppendNack(nil, s)
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

func FuzzProbeEcho(f *testing.F) {
	f.Add(AppendProbe(nil, Probe{ID: 1, Sent: 2}))
	f.Add(AppendEcho(nil, Echo{ID: 1, Sent: 2, LossPPM: 3}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := ParseProbe(b); err == nil && !bytes.Equal(AppendProbe(nil, p), b) {
			t.Fatal("probe round trip")
		}
		if e, err := ParseEcho(b); err == nil && !bytes.Equal(AppendEcho(nil, e), b) {
			t.Fatal("echo round trip")
		}
	})
}

// FuzzOpen feeds arbitrary frames to a link: nothing but a frame the peer
// sealed may open.
func FuzzOpen(f *testing.F) {
	a, _ := NewLink(testSecret, 1, 2, 1)
	a.counter = 100 // the same frame in the coordinator and its workers
	valid := a.Seal(nil, TypeData, AppendData(nil, 1, []byte("x")))
	f.Add(append([]byte(nil), valid...))
	f.Add([]byte{Magic, Version<<4 | byte(TypeData), 0, 1, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		l, _ := NewLink(testSecret, 2, 1, 1)
		in := append([]byte(nil), b...)
		if _, _, err := l.Open(b); err == nil && !bytes.Equal(in, valid) {
			t.Fatalf("a frame not sealed by the peer opened: %x", b)
		}
	})
}
