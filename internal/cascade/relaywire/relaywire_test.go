package relaywire

import (
	"bytes"
	"errors"
	"testing"
)

var testSecret = bytes.Repeat([]byte{7}, 32)

func sampleHeader() *Header {
	h := &Header{Kind: KindMedia, HopLimit: DefaultHopLimit, Layer: 2, NDst: 2, Source: 1, RouteID: 9, Seq: 77,
		Room: []byte("standup"), Publisher: []byte("alice"), Track: []byte("TR_video")}
	h.Dst[0], h.Dst[1] = 2, 3
	return h
}

func TestHeaderRoundTrip(t *testing.T) {
	h := sampleHeader()
	b, err := AppendHeader(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != h.Len() {
		t.Fatalf("len %d, Len() %d", len(b), h.Len())
	}
	b = append(b, "rtp"...)
	var g Header
	p, err := ParseHeader(b, &g)
	if err != nil {
		t.Fatal(err)
	}
	if string(p) != "rtp" || g.Kind != h.Kind || g.HopLimit != h.HopLimit || g.Layer != 2 || g.Source != 1 || g.RouteID != 9 || g.Seq != 77 ||
		string(g.Room) != "standup" || string(g.Publisher) != "alice" || string(g.Track) != "TR_video" ||
		len(g.Dests()) != 2 || g.Dst[0] != 2 || g.Dst[1] != 3 {
		t.Fatalf("round trip: %+v payload %q", g, p)
	}
}

func TestHeaderLimits(t *testing.T) {
	for name, mut := range map[string]func(*Header){
		"no dst":       func(h *Header) { h.NDst = 0 },
		"many dst":     func(h *Header) { h.NDst = MaxDst + 1 },
		"long room":    func(h *Header) { h.Room = make([]byte, MaxName+1) },
		"zero hop":     func(h *Header) { h.HopLimit = 0 },
		"unknown kind": func(h *Header) { h.Kind = 9 },
	} {
		h := sampleHeader()
		mut(h)
		if _, err := AppendHeader(nil, h); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
	b, _ := AppendHeader(nil, sampleHeader())
	var g Header
	for i := 0; i < len(b); i++ {
		if _, err := ParseHeader(b[:i], &g); err == nil {
			t.Errorf("truncated at %d parsed", i)
		}
	}
	bad := append([]byte(nil), b...)
	bad[1] = 0 // hop limit 0 on the wire
	if _, err := ParseHeader(bad, &g); !errors.Is(err, ErrField) {
		t.Errorf("hop 0: %v", err)
	}
}

func TestAllocs(t *testing.T) {
	h := sampleHeader()
	buf := make([]byte, 0, 2048)
	payload := make([]byte, 1000)
	l1, _ := NewLink(testSecret, 1, 2, 1)
	l2, _ := NewLink(testSecret, 2, 1, 1)
	body := make([]byte, 0, 2048)
	var g Header
	frame := make([]byte, 0, 2048)
	allocs := testing.AllocsPerRun(200, func() {
		msg, _ := AppendHeader(buf[:0], h)
		msg = append(msg, payload...)
		body = AppendData(body[:0], 5, msg)
		f := l1.Seal(frame[:0], TypeData, body)
		_, b, err := l2.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		_, m, _ := ParseData(b)
		if _, err := ParseHeader(m, &g); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per header+seal+open+parse, want 0", allocs)
	}
}

func TestLinkAttacks(t *testing.T) {
	a, _ := NewLink(testSecret, 1, 2, 1)
	b, _ := NewLink(testSecret, 2, 1, 1)
	frame := a.Seal(nil, TypeProbe, AppendProbe(nil, Probe{ID: 1, Sent: 2}))
	good := append([]byte(nil), frame...)
	if _, body, err := b.Open(append([]byte(nil), good...)); err != nil {
		t.Fatal(err)
	} else if p, err := ParseProbe(body); err != nil || p.ID != 1 || p.Sent != 2 {
		t.Fatal(p, err)
	}
	// replayed
	if _, _, err := b.Open(append([]byte(nil), good...)); !errors.Is(err, ErrReplay) {
		t.Errorf("replay: %v", err)
	}
	// forged: every single flipped bit of a fresh frame fails
	fresh := a.Seal(nil, TypeProbe, AppendProbe(nil, Probe{ID: 3}))
	for i := 0; i < len(fresh)*8; i++ {
		f := append([]byte(nil), fresh...)
		f[i/8] ^= 1 << (i % 8)
		if _, _, err := b.Open(f); err == nil {
			t.Fatalf("bit %d flipped: opened", i)
		}
	}
	if _, _, err := b.Open(append([]byte(nil), fresh...)); err != nil {
		t.Fatalf("fresh frame after forgeries: %v", err)
	}
	// another cluster's secret
	other := bytes.Repeat([]byte{8}, 32)
	x, _ := NewLink(other, 1, 2, 1)
	if _, _, err := b.Open(x.Seal(nil, TypeProbe, AppendProbe(nil, Probe{}))); !errors.Is(err, ErrAuth) {
		t.Errorf("other secret: %v", err)
	}
	// a third node's frame, or the frame of 1 for node 3 (misrouted), on this link
	c, _ := NewLink(testSecret, 3, 2, 1)
	if _, _, err := b.Open(c.Seal(nil, TypeProbe, AppendProbe(nil, Probe{}))); !errors.Is(err, ErrPeer) {
		t.Errorf("third node: %v", err)
	}
	a3, _ := NewLink(testSecret, 1, 3, 1)
	if _, _, err := b.Open(a3.Seal(nil, TypeProbe, AppendProbe(nil, Probe{}))); !errors.Is(err, ErrAuth) {
		t.Errorf("frame for link 1-3 on link 1-2: %v", err)
	}
	// a reflected frame: b's own frame sent back to b
	if _, _, err := b.Open(b.Seal(nil, TypeProbe, AppendProbe(nil, Probe{}))); !errors.Is(err, ErrPeer) {
		t.Errorf("reflected: %v", err)
	}
	// epochs: a rotates first and b still opens its frames; rotation keeps
	// the previous key; an unknown epoch fails
	old := a.Seal(nil, TypeProbe, AppendProbe(nil, Probe{}))
	if err := a.Rotate(2); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Open(a.Seal(nil, TypeProbe, AppendProbe(nil, Probe{}))); err != nil {
		t.Errorf("the next epoch before this end rotated: %v", err)
	}
	if err := b.Rotate(2); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Open(a.Seal(nil, TypeProbe, AppendProbe(nil, Probe{}))); err != nil {
		t.Errorf("new epoch: %v", err)
	}
	if _, _, err := a.Open(b.Seal(nil, TypeProbe, AppendProbe(nil, Probe{}))); err != nil {
		t.Errorf("new epoch, other way: %v", err)
	}
	old2 := append([]byte(nil), old...)
	if _, _, err := b.Open(old); err != nil {
		t.Errorf("previous epoch in flight: %v", err)
	}
	// the overlap ends: the previous epoch is refused, replay or not
	stale, _ := NewLink(testSecret, 1, 2, 1)
	late := stale.Seal(nil, TypeProbe, AppendProbe(nil, Probe{}))
	b.Retire()
	if _, _, err := b.Open(late); !errors.Is(err, ErrEpoch) {
		t.Errorf("retired epoch: %v", err)
	}
	if _, _, err := b.Open(old2); !errors.Is(err, ErrEpoch) {
		t.Errorf("retired epoch, replayed: %v", err)
	}
	if _, _, err := b.Open(a.Seal(nil, TypeProbe, AppendProbe(nil, Probe{}))); err != nil {
		t.Errorf("current epoch after retiring: %v", err)
	}
	z, _ := NewLink(testSecret, 1, 2, 7)
	if _, _, err := b.Open(z.Seal(nil, TypeProbe, AppendProbe(nil, Probe{}))); !errors.Is(err, ErrEpoch) {
		t.Errorf("unknown epoch: %v", err)
	}
	if _, err := NewLink(testSecret[:31], 1, 2, 1); !errors.Is(err, ErrSecret) {
		t.Errorf("short secret: %v", err)
	}
}

// TestLinkHeldRun: a run of frames sealed and opened under one hold of
// the link's lock (Hold, SealHeld, OpenHeld) interleaves with Seal and
// Open, and each frame of the run still gets its own checks: a frame
// replayed within the run, a forged one and a truncated one fail while
// the others open.
func TestLinkHeldRun(t *testing.T) {
	a, _ := NewLink(testSecret, 1, 2, 1)
	b, _ := NewLink(testSecret, 2, 1, 1)
	var frames [][]byte
	a.Hold()
	for i := 0; i < 4; i++ {
		frames = append(frames, a.SealHeld(nil, TypeProbe, AppendProbe(nil, Probe{ID: uint32(i)})))
	}
	a.Release()
	frames = append(frames, a.Seal(nil, TypeProbe, AppendProbe(nil, Probe{ID: 4})))
	replayed := append([]byte(nil), frames[1]...)
	forged := append([]byte(nil), frames[2]...)
	forged[len(forged)-1] ^= 1
	truncated := append([]byte(nil), frames[3][:LinkHeaderLen+2]...)
	run := [][]byte{forged, truncated, frames[0], frames[1], replayed, frames[2], frames[3]}
	want := []error{ErrAuth, ErrShort, nil, nil, ErrReplay, nil, nil}
	b.Hold()
	for i, f := range run {
		_, body, err := b.OpenHeld(f)
		if !errors.Is(err, want[i]) {
			t.Errorf("frame %d of the run: %v, want %v", i, err, want[i])
		}
		if err == nil {
			if _, err := ParseProbe(body); err != nil {
				t.Errorf("frame %d of the run: %v", i, err)
			}
		}
	}
	b.Release()
	if _, _, err := b.Open(frames[4]); err != nil {
		t.Errorf("frame after the run: %v", err)
	}
	if _, _, err := b.Open(append([]byte(nil), frames[0]...)); !errors.Is(err, ErrReplay) {
		t.Errorf("frame of the run replayed after it: %v", err)
	}
}

func TestRestartedSenderAccepted(t *testing.T) {
	b, _ := NewLink(testSecret, 2, 1, 1)
	a, _ := NewLink(testSecret, 1, 2, 1)
	for i := 0; i < 3; i++ {
		if _, _, err := b.Open(a.Seal(nil, TypeProbe, AppendProbe(nil, Probe{}))); err != nil {
			t.Fatal(err)
		}
	}
	a2, _ := NewLink(testSecret, 1, 2, 1) // node 1 restarted
	if _, _, err := b.Open(a2.Seal(nil, TypeProbe, AppendProbe(nil, Probe{}))); err != nil {
		t.Fatalf("restarted sender: %v", err)
	}
}

func TestWindow(t *testing.T) {
	var w Window
	seq := []struct {
		c  uint64
		ok bool
	}{{0, false}, {1, true}, {1, false}, {3, true}, {2, true}, {2, false}, {3000, true}, {3000 - WindowSize, false},
		{3000 - WindowSize + 1, true}, {2999, true}, {2999, false}, {5000, true}, {3001, false}, {4000, true}}
	for i, s := range seq {
		ok := w.Check(s.c)
		if ok != s.ok {
			t.Fatalf("step %d counter %d: ok %v want %v", i, s.c, ok, s.ok)
		}
		if ok {
			w.Accept(s.c)
		}
	}
}

func TestControlRoundTrip(t *testing.T) {
	p := &Parity{Base: 10, K: 4, M: 2, Index: 1, Shard: []byte{0, 1, 3}}
	b, err := AppendParity(nil, p)
	if err != nil {
		t.Fatal(err)
	}
	var q Parity
	if err := ParseParity(b, &q); err != nil || q.Base != 10 || q.K != 4 || q.M != 2 || q.Index != 1 || !bytes.Equal(q.Shard, p.Shard) {
		t.Fatal(q, err)
	}
	nb, err := AppendNack(nil, []uint32{1, 5, 9})
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseNack(nb, nil)
	if err != nil || len(s) != 3 || s[2] != 9 {
		t.Fatal(s, err)
	}
	if _, err := AppendNack(nil, make([]uint32, MaxNack+1)); !errors.Is(err, ErrTooLong) {
		t.Fatal(err)
	}
	e, err := ParseEcho(AppendEcho(nil, Echo{ID: 4, Sent: -5, LossPPM: 1e5}))
	if err != nil || e.ID != 4 || e.Sent != -5 || e.LossPPM != 1e5 {
		t.Fatal(e, err)
	}
	if _, err := ParseEcho(AppendEcho(nil, Echo{LossPPM: 1e6 + 1})); !errors.Is(err, ErrField) {
		t.Fatal(err)
	}
}
