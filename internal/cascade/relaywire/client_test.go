package relaywire

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func sampleHello() *Hello {
	return &Hello{Room: "standup", Publish: true, Tracks: []ClientTrack{
		{ID: "cam", Kind: KindVideo, Layers: 1, ClockRate: 90000, Mime: "video/VP8"},
		{ID: "mic", Kind: KindAudio, Layers: 1, Channels: 2, ClockRate: 48000, Mime: "audio/opus", Fmtp: "minptime=10;useinbandfec=1"},
	}}
}

// TestClientLink: a client's hello and messages open at the node and the
// node's answers at the client; every attack on the link is refused with
// its error: another secret, a flipped bit anywhere (the token included),
// a replay, a frame reflected back to its sender.
func TestClientLink(t *testing.T) {
	tokenKey := bytes.Repeat([]byte{7}, 32)
	sec := ClientSecret(tokenKey, "tok.en.x")
	cl, err := NewClientLink(sec, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	nd, err := NewClientLink(ClientSecret(tokenKey, "tok.en.x"), true, 9)
	if err != nil {
		t.Fatal(err)
	}
	body, err := AppendHello(nil, sampleHello())
	if err != nil {
		t.Fatal(err)
	}
	hello, err := cl.SealHello(nil, "tok.en.x", body)
	if err != nil {
		t.Fatal(err)
	}
	if tok, err := HelloToken(hello); err != nil || string(tok) != "tok.en.x" {
		t.Fatalf("token %q %v", tok, err)
	}
	for i := range len(hello) * 8 {
		f := bytes.Clone(hello)
		f[i/8] ^= 1 << (i % 8)
		if _, _, err := nd.Open(f); err == nil {
			t.Fatalf("bit %d flipped: opened", i)
		}
	}
	other, _ := NewClientLink(ClientSecret(tokenKey, "tok.en.y"), true, 9)
	if _, _, err := other.Open(bytes.Clone(hello)); !errors.Is(err, ErrAuth) {
		t.Fatalf("other token's key: %v", err)
	}
	h, b, err := nd.Open(bytes.Clone(hello))
	if err != nil || h.Type != TypeHello {
		t.Fatalf("hello: %v %v", h, err)
	}
	got, err := ParseHello(b)
	if err != nil || !reflect.DeepEqual(&got, sampleHello()) {
		t.Fatalf("hello body %+v %v", got, err)
	}
	if _, _, err := nd.Open(bytes.Clone(hello)); !errors.Is(err, ErrReplay) {
		t.Fatalf("replayed hello: %v", err)
	}
	msg := cl.Seal(nil, TypeClient, AppendClientMsg(nil, ClientMsg{Kind: KindMedia, Track: 1}, []byte{0x80, 1, 2}))
	if _, _, err := cl.Open(bytes.Clone(msg)); !errors.Is(err, ErrAuth) {
		t.Fatalf("reflected: %v", err)
	}
	_, b, err = nd.Open(msg)
	if err != nil {
		t.Fatal(err)
	}
	m, p, err := ParseClientMsg(b)
	if err != nil || m.Track != 1 || m.Kind != KindMedia || !bytes.Equal(p, []byte{0x80, 1, 2}) {
		t.Fatalf("message %+v %x %v", m, p, err)
	}
	w := nd.Seal(nil, TypeWelcome, AppendWelcome(nil, WelcomeOK, 42))
	_, b, err = cl.Open(w)
	if err != nil {
		t.Fatal(err)
	}
	if st, c, err := ParseWelcome(b); err != nil || st != WelcomeOK || c != 42 {
		t.Fatalf("welcome %d %d %v", st, c, err)
	}
	if _, err := NewClientLink(sec[:16], false, 0); err == nil {
		t.Fatal("short secret accepted")
	}
}

func TestHelloLimits(t *testing.T) {
	for name, h := range map[string]*Hello{
		"no room":    {},
		"long room":  {Room: string(bytes.Repeat([]byte{'r'}, MaxName+1))},
		"5 tracks":   {Room: "r", Tracks: make([]ClientTrack, MaxClientTracks+1)},
		"bad kind":   {Room: "r", Tracks: []ClientTrack{{ID: "a", Kind: 3, Layers: 1, ClockRate: 1, Mime: "x/y"}}},
		"no clock":   {Room: "r", Tracks: []ClientTrack{{ID: "a", Kind: 1, Layers: 1, Mime: "x/y"}}},
		"4 layers":   {Room: "r", Tracks: []ClientTrack{{ID: "a", Kind: 1, Layers: 4, ClockRate: 1, Mime: "x/y"}}},
		"empty mime": {Room: "r", Tracks: []ClientTrack{{ID: "a", Kind: 1, Layers: 1, ClockRate: 1}}},
	} {
		if _, err := AppendHello(nil, h); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
	b, _ := AppendHello(nil, sampleHello())
	if _, err := ParseHello(append(b, 0)); err == nil {
		t.Error("trailing byte accepted")
	}
	for i := range b {
		if _, err := ParseHello(b[:i]); err == nil {
			t.Errorf("cut at %d accepted", i)
		}
	}
}

func FuzzHello(f *testing.F) {
	b, _ := AppendHello(nil, sampleHello())
	f.Add(b)
	f.Add([]byte{1, 'r', 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHello(b)
		if err != nil {
			return
		}
		out, err := AppendHello(nil, &h)
		if err != nil {
			t.Fatalf("parsed hello does not encode: %v", err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("round trip %x -> %x", b, out)
		}
	})
}

func FuzzClientMsg(f *testing.F) {
	f.Add(AppendClientMsg(nil, ClientMsg{Kind: KindMedia, Track: 1, Layer: 2}, []byte{0x80}))
	f.Add(AppendWelcome(nil, WelcomeOK, 7))
	f.Add(AppendClientMsg(nil, ClientMsg{Kind: KindTrackGone, Track: 254}, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, p, err := ParseClientMsg(b); err == nil {
			if out := AppendClientMsg(nil, m, p); !bytes.Equal(out, b) {
				t.Fatalf("round trip %x -> %x", b, out)
			}
		}
		if st, c, err := ParseWelcome(b); err == nil {
			if out := AppendWelcome(nil, st, c); !bytes.Equal(out, b) {
				t.Fatalf("welcome round trip %x -> %x", b, out)
			}
		}
	})
}

// FuzzClientOpen: any datagram given to a node's client link is refused
// with an error or opened; it never panics, and only a genuine frame (a
// seed) opens.
func FuzzClientOpen(f *testing.F) {
	sec := ClientSecret([]byte("k"), "t")
	cl, _ := NewClientLink(sec, false, 0)
	cl.counter.Store(100) // the same seeds in every fuzz worker
	body, _ := AppendHello(nil, sampleHello())
	hello, _ := cl.SealHello(nil, "t", body)
	msg := cl.Seal(nil, TypeClient, AppendClientMsg(nil, ClientMsg{Kind: KindMedia}, nil))
	f.Add(bytes.Clone(hello))
	f.Add(bytes.Clone(msg))
	f.Fuzz(func(t *testing.T, b []byte) {
		nd, _ := NewClientLink(sec, true, 1)
		orig := bytes.Clone(b)
		_, _ = HelloToken(b)
		if _, _, err := nd.Open(b); err == nil && !bytes.Equal(orig, hello) && !bytes.Equal(orig, msg) {
			t.Fatalf("forged frame opened: %x", orig)
		}
	})
}

func TestSubTrack(t *testing.T) {
	st := &SubTrack{Publisher: "alice", ClientTrack: ClientTrack{ID: "cam", Kind: KindVideo, Layers: 3, ClockRate: 90000,
		Mime: "video/VP8"}}
	b, err := AppendSubTrack(nil, st)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseSubTrack(b)
	if err != nil || got != *st {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for i := range b {
		if _, err := ParseSubTrack(b[:i]); err == nil {
			t.Errorf("cut at %d accepted", i)
		}
	}
	if _, err := ParseSubTrack(append(b, 0)); err == nil {
		t.Error("trailing byte accepted")
	}
	for name, bad := range map[string]SubTrack{
		"no publisher":   {ClientTrack: st.ClientTrack},
		"long publisher": {Publisher: string(make([]byte, MaxName+1)), ClientTrack: st.ClientTrack},
		"no clock rate":  {Publisher: "a", ClientTrack: ClientTrack{ID: "x", Kind: KindAudio, Layers: 1, Mime: "audio/opus"}},
	} {
		if _, err := AppendSubTrack(nil, &bad); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
	// a node -> client message names any of MaxSubTracks indices
	m, p, err := ParseClientMsg(AppendClientMsg(nil, ClientMsg{Kind: KindTrack, Track: 200}, b))
	if err != nil || m.Track != 200 || !bytes.Equal(p, b) {
		t.Fatalf("track message: %+v %v", m, err)
	}
	if _, _, err := ParseClientMsg([]byte{byte(KindLayer + 1), 0, 0, 0}); err == nil {
		t.Fatal("unknown kind parsed")
	}
}

// FuzzSubTrack: a track message's payload parses only if it encodes back
// to the same bytes.
func FuzzSubTrack(f *testing.F) {
	b, _ := AppendSubTrack(nil, &SubTrack{Publisher: "alice", ClientTrack: sampleHello().Tracks[0]})
	f.Add(b)
	f.Add([]byte{1, 'p', 1, 't', 1, 1, 2, 0, 0, 0xbb, 0x80, 10, 'a', 'u', 'd', 'i', 'o', '/', 'o', 'p', 'u', 's', 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseSubTrack(b)
		if err != nil {
			return
		}
		out, err := AppendSubTrack(nil, &st)
		if err != nil {
			t.Fatalf("parsed track does not encode: %v", err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("round trip %x -> %x", b, out)
		}
	})
}

func TestLayerMsg(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"layer 0", AppendLayerMsg(nil, 7, 0), true},
		{"layer 2", AppendLayerMsg(nil, 254, 2), true},
		{"all", AppendLayerMsg(nil, 0, LayerAll), true},
		{"none", AppendLayerMsg(nil, 0, LayerNone), true},
		{"layer 3", AppendLayerMsg(nil, 0, 3), false},
		{"layer 0xFD", AppendLayerMsg(nil, 0, 0xFD), false},
		{"payload", append(AppendLayerMsg(nil, 0, 1), 0), false},
		{"short", AppendLayerMsg(nil, 0, 1)[:3], false},
		{"reserved set", []byte{byte(KindLayer), 0, 1, 1}, false},
		{"other kind", AppendClientMsg(nil, ClientMsg{Kind: KindFeedback, Track: 1, Layer: 1}, nil), false},
	} {
		track, layer, err := ParseLayerMsg(tc.b)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok %v", tc.name, err, tc.ok)
			continue
		}
		if tc.ok && (track != tc.b[1] || layer != tc.b[2]) {
			t.Errorf("%s: track %d layer %d", tc.name, track, layer)
		}
	}
}

// FuzzLayerMsg: a layer choice parses only if it encodes back to the same
// bytes, and names a layer, all or none.
func FuzzLayerMsg(f *testing.F) {
	f.Add(AppendLayerMsg(nil, 3, 1))
	f.Add(AppendLayerMsg(nil, 0, LayerAll))
	f.Add(AppendLayerMsg(nil, 9, LayerNone))
	f.Add([]byte{byte(KindLayer), 0, 7, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		track, layer, err := ParseLayerMsg(b)
		if err != nil {
			return
		}
		if layer > 2 && layer != LayerAll && layer != LayerNone {
			t.Fatalf("layer %d accepted", layer)
		}
		if out := AppendLayerMsg(nil, track, layer); !bytes.Equal(out, b) {
			t.Fatalf("round trip %x -> %x", b, out)
		}
	})
}
