package p2p

import (
	"bytes"
	"crypto/rand"
	"testing"
)

// FuzzPacket feeds datagrams to the packet parser and the authenticated
// open: nothing panics, a header round-trips, and only a packet sealed with
// the key opens.
func FuzzPacket(f *testing.F) {
	var key [32]byte
	_, _ = rand.Read(key[:])
	ciph := cipherSuite.Cipher(key)
	var session [8]byte
	good := appendHeader(nil, Header{Type: typeData, Session: session, Nonce: 3})
	good = ciph.Encrypt(good, 3, good[:headerLen], []byte("01234567payload"))
	f.Add(good)
	f.Add([]byte{typeProbe})
	f.Add(append(appendHeader(nil, Header{Type: typeAck}), make([]byte, 24)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, sealed, err := ParseHeader(b)
		if err != nil {
			return
		}
		if !bytes.Equal(appendHeader(nil, h), b[:headerLen]) {
			t.Fatalf("header does not round-trip")
		}
		body, err := ciph.Decrypt(nil, h.Nonce, b[:headerLen], sealed)
		if err != nil {
			return
		}
		if !bytes.Equal(b, good) {
			t.Fatalf("a packet not sealed by us opened")
		}
		_ = parseBody(h.Type, body)
	})
}

// FuzzReplayWindow checks the window never accepts a nonce twice.
func FuzzReplayWindow(f *testing.F) {
	f.Add([]byte{1, 2, 3, 200, 4, 4})
	f.Fuzz(func(t *testing.T, b []byte) {
		var w replayWindow
		seen := map[uint64]bool{}
		for i := 0; i+1 < len(b); i += 2 {
			n := uint64(b[i])<<8 | uint64(b[i+1])
			n *= 7
			if w.check(n) {
				if seen[n] {
					t.Fatalf("nonce %d accepted twice", n)
				}
				w.accept(n)
				seen[n] = true
			}
		}
	})
}

// FuzzSignalMessage feeds the peer-to-peer signaling messages to their
// decoder: nothing panics and a valid message re-encodes to a valid one.
func FuzzSignalMessage(f *testing.F) {
	for _, s := range []string{
		`{"t":"hs","hs":"AAEC"}`,
		`{"t":"cand","c":[{"a":"203.0.113.7:4100","k":"srflx"},{"a":"203.0.113.9:50000","k":"relay","tr":"tcp"}]}`,
		`{"t":"nat","nat":{"mapping":"endpoint-independent","filtering":"address-dependent"}}`,
		`{"t":"bye"}`,
		`{"t":"cand","c":[{"a":"203.0.113.7:4100","k":"srflx","seq":1}]}`,
		`{"t":"cand","c":[{"a":"0.0.0.0:1","k":"host"}]}`,
		`{"t":"cand","c":[{"a":"192.0.3.1:40000","k":"mapped"},{"a":"198.51.100.4:3490","k":"relay-node"}]}`,
		`{"t":"relay","rn":{"n":[{"id":"node0","a":"198.51.100.4:3490","g":"AAECAw"}]}}`,
		`{"t":"relay","rn":{"n":[]}}`,
		`{"t":"relay"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMessage(b)
		if err != nil {
			return
		}
		if _, err := decodeMessage(encodeMessage(m)); err != nil {
			t.Fatalf("re-encoded message refused: %v", err)
		}
	})
}
