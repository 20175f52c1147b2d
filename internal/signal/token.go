package signal

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"
)

// Tokens are JWTs (RFC 7519) in the compact JWS serialization (RFC 7515
// section 7.1) signed with HMAC-SHA256 ("HS256", RFC 7518 section 3.2):
//
//	base64url(header) "." base64url(claims) "." base64url(HMAC-SHA256(key, header "." claims))
//
// The header must be {"alg":"HS256","typ":"JWT"} (typ optional); any other
// alg is refused, so "none" and key-confusion tricks cannot pass. Claims are
// in the Claims type. Any JWT library that signs HS256 mints valid tokens.

// Claims are what a token grants.
type Claims struct {
	// Room is the one room the token admits to.
	Room string `json:"room"`
	// Identity is the participant's name as other participants see it (JWT
	// "sub").
	Identity string `json:"sub"`
	// Publish allows sending audio, video and data.
	Publish bool `json:"pub"`
	// Subscribe allows receiving the others' tracks.
	Subscribe bool `json:"subs"`
	// Expires is the Unix time after which the token is refused (JWT "exp").
	Expires int64 `json:"exp"`
	// NotBefore, when set, is the Unix time before which the token is
	// refused (JWT "nbf").
	NotBefore int64 `json:"nbf,omitempty"`
	// IssuedAt is informational (JWT "iat").
	IssuedAt int64 `json:"iat,omitempty"`
}

// maxTokenLen bounds what the parser looks at; real tokens are ~250 bytes.
const maxTokenLen = 4096

// Name limits. A room name is a bus subject token (bus.ValidName), so at
// most MaxRoomLen; an identity only travels inside messages.
const (
	MaxRoomLen     = 64
	MaxIdentityLen = 128
	maxNameLen     = MaxIdentityLen
)

// clockSkew is the leeway given to exp and nbf.
const clockSkew = 30 * time.Second

type tokenHeader struct {
	Alg string `json:"alg"`
	Typ string `json:"typ,omitempty"`
}

var (
	b64        = base64.RawURLEncoding.Strict() // refuse non-canonical encodings: one token, one spelling
	hs256Head  = b64.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	errKeyless = fmt.Errorf("%w: empty key", ErrConfig)
)

// MintToken returns a signed token carrying c.
func MintToken(key []byte, c Claims) (string, error) {
	if len(key) == 0 {
		return "", errKeyless
	}
	if err := c.validate(); err != nil {
		return "", err
	}
	body, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	signing := hs256Head + "." + b64.EncodeToString(body)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(signing))
	return signing + "." + b64.EncodeToString(mac.Sum(nil)), nil
}

func (c *Claims) validate() error {
	switch {
	case !ValidRoom(c.Room):
		return fmt.Errorf("%w: room", ErrTokenClaims)
	case !validIdentity(c.Identity):
		return fmt.Errorf("%w: sub", ErrTokenClaims)
	case c.Expires <= 0:
		return fmt.Errorf("%w: exp", ErrTokenClaims)
	}
	return nil
}

// ValidRoom reports whether s is a usable room name: 1..64 bytes of
// letters, digits, '-' and '_', what the bus takes as a subject token
// (bus.ValidName: a token must not promise a room the bus refuses). Room
// names appear in bus subjects, logs and the page, and this narrow
// alphabet keeps them harmless in all three.
func ValidRoom(s string) bool { return len(s) <= MaxRoomLen && validName(s, false) }

// ValidIdentity reports whether s is a usable identity: 1..128 bytes of
// what a room name takes and '.', '@' and ':' (e-mail-like user names).
func ValidIdentity(s string) bool { return validName(s, true) }

func validIdentity(s string) bool { return ValidIdentity(s) }

func validName(s string, extra bool) bool {
	if len(s) == 0 || len(s) > maxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch b := s[i]; {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9', b == '-', b == '_':
		case extra && (b == '.' || b == '@' || b == ':'):
		default:
			return false
		}
	}
	return true
}

// ParseToken checks token's signature with key and its time claims against
// now, and returns its claims. Every failure wraps one of the ErrToken*
// sentinels.
func ParseToken(key []byte, token string, now time.Time) (Claims, error) {
	var c Claims
	if len(key) == 0 {
		return c, errKeyless
	}
	if len(token) == 0 || len(token) > maxTokenLen {
		return c, fmt.Errorf("%w: length %d", ErrTokenMalformed, len(token))
	}
	tb := []byte(token)
	i := bytes.IndexByte(tb, '.')
	j := bytes.LastIndexByte(tb, '.')
	if i < 0 || j == i {
		return c, fmt.Errorf("%w: want three parts", ErrTokenMalformed)
	}
	head, body, sig := tb[:i], tb[i+1:j], tb[j+1:]
	if bytes.IndexByte(body, '.') >= 0 {
		return c, fmt.Errorf("%w: want three parts", ErrTokenMalformed)
	}
	hb, err := b64.DecodeString(string(head))
	if err != nil {
		return c, fmt.Errorf("%w: header: %w", ErrTokenMalformed, err)
	}
	var h tokenHeader
	if err := json.Unmarshal(hb, &h); err != nil {
		return c, fmt.Errorf("%w: header: %w", ErrTokenMalformed, err)
	}
	if h.Alg != "HS256" || (h.Typ != "" && h.Typ != "JWT") {
		return c, fmt.Errorf("%w: alg %q not accepted", ErrTokenMalformed, h.Alg)
	}
	got, err := b64.DecodeString(string(sig))
	if err != nil {
		return c, fmt.Errorf("%w: signature: %w", ErrTokenMalformed, err)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write(tb[:j])
	if !hmac.Equal(got, mac.Sum(nil)) {
		return c, ErrTokenSignature
	}
	cb, err := b64.DecodeString(string(body))
	if err != nil {
		return c, fmt.Errorf("%w: claims: %w", ErrTokenMalformed, err)
	}
	if err := json.Unmarshal(cb, &c); err != nil {
		return Claims{}, fmt.Errorf("%w: claims: %w", ErrTokenMalformed, err)
	}
	if err := c.validate(); err != nil {
		return Claims{}, err
	}
	if now.Add(-clockSkew).Unix() >= c.Expires {
		return Claims{}, fmt.Errorf("%w at %s", ErrTokenExpired, time.Unix(c.Expires, 0).UTC().Format(time.RFC3339))
	}
	if c.NotBefore != 0 && now.Add(clockSkew).Unix() < c.NotBefore {
		return Claims{}, ErrTokenNotYetValid
	}
	return c, nil
}
