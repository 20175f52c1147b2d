// Package relayauth ties relay clients (docs/relay-protocol.md, "Clients")
// to the signal role's access tokens: the same HS256 tokens, signed with
// the same key, that admit a browser to a room admit a relay client,
// together with the link secret their issuer derives from the token
// (relaywire.ClientSecret) and hands only to that client. One token
// mechanism, not two.
package relayauth

import (
	"fmt"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relay"
	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/signal"
)

// MinKey is the shortest token key accepted (as `traverse token` wants).
const MinKey = 16

// Verifier returns the relay endpoint's ClientAuth for the token key: a
// token signal.ParseToken accepts (signature, alg, exp, nbf, room and
// identity syntax) grants its room, identity and rights until it expires.
func Verifier(key []byte) relay.ClientAuth {
	key = append([]byte(nil), key...)
	return func(token []byte, now time.Time) (relay.ClientGrant, []byte, error) {
		c, err := signal.ParseToken(key, string(token), now)
		if err != nil {
			return relay.ClientGrant{}, nil, err
		}
		return relay.ClientGrant{Room: c.Room, Identity: c.Identity, Publish: c.Publish, Subscribe: c.Subscribe,
			Expires: time.Unix(c.Expires, 0)}, relaywire.ClientSecret(key, string(token)), nil
	}
}

// Mint returns a token carrying c and the client's link secret: what the
// issuer hands a relay client.
func Mint(key []byte, c signal.Claims) (token string, secret []byte, err error) {
	if len(key) < MinKey {
		return "", nil, fmt.Errorf("relayauth: token key shorter than %d bytes", MinKey)
	}
	token, err = signal.MintToken(key, c)
	if err != nil {
		return "", nil, err
	}
	return token, relaywire.ClientSecret(key, token), nil
}
