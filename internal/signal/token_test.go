package signal

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

var testKey = []byte("0123456789abcdef-test-key")

func TestToken(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	good := Claims{Room: "room-1", Identity: "alice@example.org", Publish: true, Subscribe: true,
		Expires: now.Add(time.Hour).Unix()}
	tok, err := MintToken(testKey, good)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(tok, ".")
	mint := func(c Claims) string {
		s, err := MintToken(testKey, c)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	expired := good
	expired.Expires = now.Add(-time.Hour).Unix()
	future := good
	future.NotBefore = now.Add(time.Hour).Unix()
	noneAlg := b64.EncodeToString([]byte(`{"alg":"none"}`)) + "." + parts[1] + "."
	for _, tc := range []struct {
		name  string
		key   []byte
		token string
		want  error
	}{
		{"good", testKey, tok, nil},
		{"other key", []byte("another-key-of-16+bytes"), tok, ErrTokenSignature},
		{"tampered claims", testKey, parts[0] + "." + b64.EncodeToString([]byte(`{"room":"room-2","sub":"alice","exp":9999999999}`)) + "." + parts[2], ErrTokenSignature},
		{"alg none", testKey, noneAlg, ErrTokenMalformed},
		{"expired", testKey, mint(expired), ErrTokenExpired},
		{"not yet valid", testKey, mint(future), ErrTokenNotYetValid},
		{"two parts", testKey, parts[0] + "." + parts[1], ErrTokenMalformed},
		{"four parts", testKey, tok + ".x", ErrTokenMalformed},
		{"empty", testKey, "", ErrTokenMalformed},
		{"garbage", testKey, "a.b.c", ErrTokenMalformed},
		{"huge", testKey, strings.Repeat("a", maxTokenLen+1), ErrTokenMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseToken(tc.key, tc.token, now)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if tc.want == nil && c != good {
				t.Fatalf("claims = %+v, want %+v", c, good)
			}
			if tc.want != nil && Class(err) != ClassUnauthorized {
				t.Fatalf("class = %s", Class(err))
			}
		})
	}
}

func TestMintTokenRefusesBadClaims(t *testing.T) {
	for _, c := range []Claims{
		{Room: "", Identity: "a", Expires: 1},
		{Room: "a b", Identity: "a", Expires: 1},
		{Room: "r", Identity: "", Expires: 1},
		{Room: "r", Identity: "a\"b", Expires: 1},
		{Room: "r", Identity: "a", Expires: 0},
		{Room: strings.Repeat("r", maxNameLen+1), Identity: "a", Expires: 1},
	} {
		if _, err := MintToken(testKey, c); !errors.Is(err, ErrTokenClaims) {
			t.Errorf("%+v: err = %v", c, err)
		}
	}
	if _, err := MintToken(nil, Claims{Room: "r", Identity: "a", Expires: 1}); !errors.Is(err, ErrConfig) {
		t.Errorf("empty key: %v", err)
	}
}

func FuzzParseToken(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	tok, _ := MintToken(testKey, Claims{Room: "r", Identity: "i", Publish: true, Expires: now.Add(time.Hour).Unix()})
	f.Add(tok)
	f.Add("a.b.c")
	f.Add("eyJhbGciOiJIUzI1NiJ9.e30.")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseToken(testKey, s, now)
		if err == nil {
			// Whatever parses must carry valid claims and round-trip.
			if c.validate() != nil {
				t.Fatalf("accepted invalid claims %+v", c)
			}
			if _, err := MintToken(testKey, c); err != nil {
				t.Fatal(err)
			}
		} else if Class(err) != ClassUnauthorized {
			t.Fatalf("error %v has class %s", err, Class(err))
		}
	})
}

// A signature whose last character differs only in its padding bits
// decodes to the same bytes under lenient base64; such a second spelling
// of a valid token is refused.
func TestTokenNonCanonicalSignature(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	for i := 0; i < 200; i++ {
		tok, err := MintToken(key, Claims{Room: "r", Identity: fmt.Sprintf("u%d", i), Expires: time.Now().Add(time.Hour).Unix()})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseToken(key, tok, time.Now()); err != nil {
			t.Fatalf("valid token refused: %v", err)
		}
		last := strings.IndexByte(alphabet, tok[len(tok)-1])
		if last%4 != 0 { // a 32-byte signature leaves 2 padding bits, zero when canonical
			t.Fatalf("signature of %q does not end on a canonical character", tok)
		}
		alt := tok[:len(tok)-1] + string(alphabet[last+1])
		if _, err := ParseToken(key, alt, time.Now()); err == nil {
			t.Fatalf("non-canonical spelling %q accepted", alt)
		}
	}
}
