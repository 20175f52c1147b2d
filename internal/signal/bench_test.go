package signal

import (
	"net/netip"
	"testing"
	"time"
)

// Signaling is not a media path, but every join parses a token and an SDP
// and every trickled candidate a JSON message: these say what one costs.

func BenchmarkParseToken(b *testing.B) {
	now := time.Now()
	tok, _ := MintToken(testKey, Claims{Room: "room-1", Identity: "alice", Publish: true, Subscribe: true, Expires: now.Add(time.Hour).Unix()})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseToken(testKey, tok, now); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeCandidate(b *testing.B) {
	msg := []byte(`{"type":"candidate","candidate":{"candidate":"candidate:842163049 1 udp 1677729535 127.0.0.1 52431 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag q7bK","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"q7bK"}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeClient(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseOffer(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseOffer(browserOffer); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRewriteSDP(b *testing.B) {
	answer := nodeAnswer
	pub := netip.MustParseAddr("203.0.113.7")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := RewriteSDP(answer, pub); err != nil {
			b.Fatal(err)
		}
	}
}
