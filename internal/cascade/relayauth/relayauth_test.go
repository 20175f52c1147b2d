package relayauth

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/signal"
)

// TestVerifier: a minted token grants its room, identity, rights and
// expiry with the secret Mint gave; another key, an expired token and a
// short key are refused.
func TestVerifier(t *testing.T) {
	key := bytes.Repeat([]byte("k"), 20)
	now := time.Now()
	c := signal.Claims{Room: "r", Identity: "ingest", Publish: true, Expires: now.Add(time.Hour).Unix()}
	tok, sec, err := Mint(key, c)
	if err != nil {
		t.Fatal(err)
	}
	g, got, err := Verifier(key)([]byte(tok), now)
	if err != nil || g.Room != "r" || g.Identity != "ingest" || !g.Publish || g.Subscribe || g.Expires.Unix() != c.Expires {
		t.Fatalf("grant %+v %v", g, err)
	}
	if !bytes.Equal(got, sec) || !bytes.Equal(sec, relaywire.ClientSecret(key, tok)) {
		t.Fatal("the verifier's secret is not the one minted")
	}
	if _, _, err := Verifier(bytes.Repeat([]byte("x"), 20))([]byte(tok), now); !errors.Is(err, signal.ErrTokenSignature) {
		t.Fatalf("another key: %v", err)
	}
	if _, _, err := Verifier(key)([]byte(tok), now.Add(2*time.Hour)); !errors.Is(err, signal.ErrTokenExpired) {
		t.Fatalf("expired: %v", err)
	}
	if _, _, err := Mint(key[:8], c); err == nil {
		t.Fatal("a short key minted")
	}
}
