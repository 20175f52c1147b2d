package relayproto

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"testing"
	"time"
)

var testKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))

func TestGrantRoundTrip(t *testing.T) {
	var s Session
	_, _ = rand.Read(s[:])
	now := time.Unix(1_800_000_000, 0)
	g := Grant{Session: s, Side: 1, Node: "relay-eu_1", Expires: now.Add(time.Minute)}
	b, err := AppendGrant([]byte("x"), g, testKey)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Verify(b[1:], testKey.Public().(ed25519.PublicKey), "relay-eu_1", now)
	if err != nil || got != g {
		t.Fatalf("got %+v, %v; want %+v", got, err, g)
	}
	for _, tc := range []struct {
		name string
		node string
		now  time.Time
		mod  func([]byte)
		want error
	}{
		{"other node", "relay-us", now, nil, ErrOtherNode},
		{"expired", "relay-eu_1", now.Add(time.Minute), nil, ErrExpired},
		{"session altered", "relay-eu_1", now, func(b []byte) { b[10] ^= 1 }, ErrSignature},
		{"side altered", "relay-eu_1", now, func(b []byte) { b[9+SessionLen] = 0 }, ErrSignature},
		{"signature altered", "relay-eu_1", now, func(b []byte) { b[len(b)-1] ^= 1 }, ErrSignature},
		{"side 2", "relay-eu_1", now, func(b []byte) { b[9+SessionLen] = 2 }, ErrMalformed},
		{"truncated", "relay-eu_1", now, func(b []byte) { b[grantFixed-1] = 60 }, ErrMalformed},
	} {
		c := bytes.Clone(b[1:])
		if tc.mod != nil {
			tc.mod(c)
		}
		if _, err := Verify(c, testKey.Public().(ed25519.PublicKey), tc.node, tc.now); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := AppendGrant(nil, Grant{Side: 2, Node: "n"}, testKey); err == nil {
		t.Error("side 2 minted")
	}
}

// FuzzGrant: no input panics; a grant that parses re-encodes to the same
// bytes but for the signature, and only the key's signature verifies.
func FuzzGrant(f *testing.F) {
	g, _ := AppendGrant(nil, Grant{Side: 1, Node: "r1", Expires: time.Unix(2e9, 0)}, testKey)
	f.Add(g)
	f.Add([]byte{1, 2, 3})
	f.Add(make([]byte, MaxGrantLen))
	pub := testKey.Public().(ed25519.PublicKey)
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseGrant(b)
		if err != nil {
			return
		}
		again, err := AppendGrant(nil, p, testKey)
		if err != nil {
			t.Fatalf("parsed %+v but cannot encode it: %v", p, err)
		}
		if !bytes.Equal(again[:len(again)-64], b[:len(b)-64]) {
			t.Fatalf("round trip changed the grant:\n%x\n%x", b, again)
		}
		_, _ = Verify(b, pub, p.Node, time.Unix(0, 0))
	})
}

// FuzzFrames: the frame parsers never panic and bound frames round-trip.
func FuzzFrames(f *testing.F) {
	f.Add(AppendBound(nil, Session{1, 2}, 1, FlagReady))
	f.Add(AppendPunch(nil, Session{3}))
	f.Add(AppendData(nil, []byte("x")))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, side, flags, err := ParseBound(b)
		if err != nil {
			return
		}
		if again := AppendBound(nil, s, side, flags); !bytes.Equal(again, b) {
			t.Fatalf("bound %x re-encodes as %x", b, again)
		}
	})
}
