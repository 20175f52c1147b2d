package bus

import (
	"errors"
	"os"
	"testing"
)

// FuzzDecode feeds every message type's decoder: none may panic, and a
// message that decodes must encode and decode again to a valid message.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"type":"join","session":"s1","join":{"room":"r","identity":"a","publish":true,"subscribe":true,"offer":"v=0"}}`,
		`{"type":"candidate","session":"s1","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}}`,
		`{"sdp":"v=0","node":"n"}`, `{"error":{"status":"unavailable","message":"full"}}`,
		`{"type":"offer","session":"s","sdp":"v=0"}`,
		`{"type":"layer","session":"s","layer":{"track":"video","max_layer":0}}`,
		`{"type":"layer","session":"s","layer":{"track":"video","stream_id":"alice","width":640,"height":360}}`,
		`{"type":"event","session":"s","event":{"type":"active_speaker","room":"r","speakers":[{"session":"s","identity":"a","level":90}]}}`,
		`{"type":"track_published","room":"r","track":{"id":"t","stream_id":"s","kind":"video","layers":["q","h","f"]},"time":"2026-01-01T00:00:00Z"}`,
		`{"node":"n1","region":"eu","udp":"1.2.3.4:7882","tcp":"1.2.3.4:7881","load":{"peers":1,"rooms":1,"packets_per_second":3.5},"time":"2026-01-01T00:00:00Z"}`,
		`{"session":"s","room":"r","node":"n","ufrag":"abcd","time":"2026-01-01T00:00:00Z"}`,
		`{"type":"drain","session":"","drain":{"period_ms":10000}}`, `{"type":"drain","drain":{"period_ms":-1}}`,
		`{"type":"rejoin","session":"s","reason":"drain"}`, `{"type":"rejoin","session":"s","reason":"x"}`,
		`{"node":"n1","udp":"1.2.3.4:7882","load":{"peers":2},"rooms":["r1","r2"],"time":"2026-01-01T00:00:00Z"}`,
		`{"node":"n1","udp":"1.2.3.4:7882","load":{},"relay":"10.0.0.1:7890","relay_id":7,"time":"2026-01-01T00:00:00Z"}`,
		`{"node":"n1","udp":"1.2.3.4:7882","load":{},"relay":"10.0.0.1:0","relay_id":7,"time":"2026-01-01T00:00:00Z"}`,
		`{"node":"n1","controller":"c1","lease":3,"gen":2,"peers":[{"id":7,"addr":"10.0.0.2:7890"}],"routes":[{"dst":7,"via":7}],"needs":[{"room":"r","publisher":"s","track":"t","nodes":[7]}],"tracks":[{"room":"r","publisher":"s2","node":7,"track":{"id":"v","stream_id":"s2","kind":"video","codec":"VP8","clock_rate":90000}}],"time":"2026-01-01T00:00:00Z"}`,
		`{"node":"n1","controller":"c1","lease":3,"gen":2,"epoch":65535,"keep_prev":true,"needs":[{"room":"r","publisher":"s","track":"t","nodes":[7,8],"relay":true}],"time":"2026-01-01T00:00:00Z"}`,
		`{"node":"n1","controller":"c1","lease":3,"needs":[{"room":"r","publisher":"s","track":"t","nodes":[0],"relay":true}],"time":"2026-01-01T00:00:00Z"}`,
		`{"node":"n1","id":9,"links":[{"peer":7,"rtt_us":800,"jitter_us":50,"loss":0.1,"up":true}],"time":"2026-01-01T00:00:00Z"}`,
		`{"type":"join","session":"s1","join":{"room":"r","identity":"a","subscribe":true,"offer":"v=0","ice":{"ufrag":"abcdABCD0123+/xy","pwd":"abcdefghijklmnopqrstuvwxyzABCDEF"}}}`,
		`{"type":"join","session":"s1","join":{"room":"r","identity":"a","offer":"v=0","ice":{"ufrag":"ab:c","pwd":"short"}}}`,
		`{"type":"claimed","session":"s1"}`, `{"type":"claim","session":"s1"}`,
		`{"node":"n1","udp":"1.2.3.4:7882","load":{},"group":"edge1","time":"2026-01-01T00:00:00Z"}`,
		`{"node":"n1","udp":"1.2.3.4:7882","load":{},"group":"a.b","time":"2026-01-01T00:00:00Z"}`,
		`null`, `[]`, `{"type":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		check[Request](t, b)
		check[Reply](t, b)
		check[SessionMessage](t, b)
		check[RoomEvent](t, b)
		check[NodeAnnounce](t, b)
		check[SessionAnnounce](t, b)
		check[CascadeCommand](t, b)
		check[CascadeReport](t, b)
	})
}

func check[T any, PT interface {
	*T
	validator
}](t *testing.T, b []byte) {
	v, err := Decode[T, PT](b)
	if err != nil {
		return
	}
	again, err := jsonRoundTrip[T, PT](&v)
	if err != nil {
		t.Fatalf("%T decoded from %q but not after a round trip: %v", v, b, err)
	}
	_ = again
}

func TestValidRelay(t *testing.T) {
	for _, tc := range []struct {
		addr string
		id   uint32
		ok   bool
	}{
		{"", 0, true}, {"10.0.0.1:7890", 7, true}, {"[::1]:7890", 1, true},
		{"10.0.0.1:7890", 0, false}, {"", 7, false}, {"10.0.0.1:0", 7, false},
		{"0.0.0.0:7890", 7, false}, {"[fe80::1%eth0]:7890", 7, false}, {"host:7890", 7, false},
	} {
		a := NodeAnnounce{Node: "n", UDP: "1.2.3.4:1", Relay: tc.addr, RelayID: tc.id}
		if err := a.Validate(); (err == nil) != tc.ok {
			t.Errorf("relay %q id %d: %v, want ok=%v", tc.addr, tc.id, err, tc.ok)
		}
	}
}

func TestLayerRequestValidate(t *testing.T) {
	for _, tc := range []struct {
		l  LayerRequest
		ok bool
	}{
		{LayerRequest{Track: "v", MaxLayer: 1}, true},
		{LayerRequest{Track: "*", MaxLayer: 0}, true},
		{LayerRequest{Track: "v", StreamID: "alice", Width: 640, Height: 360}, true},
		{LayerRequest{Track: "v", Width: 320}, true},
		{LayerRequest{Track: "", MaxLayer: 1}, false},
		{LayerRequest{Track: "v", MaxLayer: 3}, false},
		{LayerRequest{Track: "v", MaxLayer: -1}, false},
		{LayerRequest{Track: "v", Width: -1}, false},
		{LayerRequest{Track: "v", Height: MaxVideoSize + 1}, false},
	} {
		l := tc.l
		r := Request{Type: RequestLayer, Session: "s", Layer: &l}
		if err := r.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: %v", tc.l, err)
		}
	}
}

// FuzzParseIdentity: a credentials file parses to a usable identity or an
// ErrCredentials-class error, never a panic; what parses writes and parses
// back to the same key, role and node.
func FuzzParseIdentity(f *testing.F) {
	id, err := NewIdentity(RoleNode, "n1")
	if err != nil {
		f.Fatal(err)
	}
	path := f.TempDir() + "/n1.creds"
	if err := id.WriteFile(path); err != nil {
		f.Fatal(err)
	}
	good, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte("# role: signal\nSUAM\n"))
	f.Add([]byte("# role: sfu\n# node: \n"))
	f.Add([]byte("-----BEGIN NATS USER JWT-----\nx\n------END NATS USER JWT------\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := ParseIdentity(b)
		if err != nil {
			if !errors.Is(err, ErrCredentials) {
				t.Fatalf("error outside its class: %v", err)
			}
			return
		}
		p := t.TempDir() + "/x.creds"
		if err := id.WriteFile(p); err != nil {
			t.Fatal(err)
		}
		back, err := LoadIdentity(p)
		if err != nil || back.Public() != id.Public() || back.Role != id.Role || back.Node != id.Node {
			t.Fatalf("round trip: %+v %v", back, err)
		}
	})
}

// A group join's ICE credentials and a node's group name are checked.
func TestGroupFieldsValidated(t *testing.T) {
	join := func(ice *ICECredentials) error {
		r := Request{Type: RequestJoin, Session: "s", Join: &Join{Room: "r", Identity: "a", Offer: "v=0", ICE: ice}}
		return r.Validate()
	}
	for _, tc := range []struct {
		ice *ICECredentials
		ok  bool
	}{
		{&ICECredentials{Ufrag: "abcd", Pwd: "abcdefghijklmnopqrstuv"}, true},
		{&ICECredentials{Ufrag: "ab+/", Pwd: "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"}, true},
		{&ICECredentials{Ufrag: "abc", Pwd: "abcdefghijklmnopqrstuv"}, false},
		{&ICECredentials{Ufrag: "ab:cd", Pwd: "abcdefghijklmnopqrstuv"}, false},
		{&ICECredentials{Ufrag: "abcd", Pwd: "short"}, false},
		{&ICECredentials{Ufrag: "abcd", Pwd: "abcdefghijklmnopqrstu\r"}, false},
	} {
		if err := join(tc.ice); (err == nil) != tc.ok {
			t.Errorf("%+v: %v", *tc.ice, err)
		}
	}
	a := NodeAnnounce{Node: "n", UDP: "1.2.3.4:7882", Group: "edge-1"}
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}
	a.Group = "a.b"
	if err := a.Validate(); err == nil {
		t.Fatal("a group name with a dot accepted")
	}
}
