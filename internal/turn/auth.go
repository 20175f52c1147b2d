package turn

import (
	"crypto/hmac"
	"crypto/md5" //nolint:gosec // RFC 8489 section 9.2.2 long-term key is MD5.
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // TURN REST API passwords are HMAC-SHA1.
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// RESTCredentials mints a time-limited credential from the shared secret
// (the TURN REST API; coturn's use-auth-secret): the user name is
// "EXPIRY:user" (or just EXPIRY when user is empty), EXPIRY the Unix time
// at which it stops being accepted, and the password is
// base64(HMAC-SHA1(secret, username)). Web applications call this to hand
// browsers an iceServers entry.
func RESTCredentials(secret, user string, ttl time.Duration, now time.Time) (username, password string) {
	username = strconv.FormatInt(now.Add(ttl).Unix(), 10)
	if user != "" {
		username += ":" + user
	}
	return username, restPassword(secret, username)
}

func restPassword(secret, username string) string {
	m := hmac.New(sha1.New, []byte(secret))
	m.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// restExpiry parses the expiry of a REST user name ("EXPIRY" or
// "EXPIRY:user"). ok is false when the name is not of that form: EXPIRY is
// decimal digits only (no sign, no space; strconv alone would take "+123").
func restExpiry(username string) (time.Time, bool) {
	ts := username
	if i := strings.IndexByte(username, ':'); i >= 0 {
		ts = username[:i]
	}
	if ts == "" || len(ts) > 18 {
		return time.Time{}, false
	}
	var n int64
	for i := 0; i < len(ts); i++ {
		c := ts[i]
		if c < '0' || c > '9' {
			return time.Time{}, false
		}
		n = n*10 + int64(c-'0')
	}
	return time.Unix(n, 0), true
}

// longTermKey is RFC 8489 section 9.2.2's key: MD5(user:realm:password).
func longTermKey(user, realm, password string) []byte {
	h := md5.Sum([]byte(user + ":" + realm + ":" + password)) //nolint:gosec
	return h[:]
}

// nonces are stateless: the expiry time and a MAC over it and the client's
// 5-tuple (transport, address and port), so a nonce is good for one client
// transport address and NonceLifetime. A request captured and replayed from
// another port of the same address gets 438 Stale Nonce, not an allocation.
type nonces struct {
	key      [32]byte
	lifetime time.Duration
}

func newNonces(lifetime time.Duration) *nonces {
	n := &nonces{lifetime: lifetime}
	_, _ = rand.Read(n.key[:])
	return n
}

// nonceLen is the unpadded URL-safe base64 (RFC 8489 section 14.10's
// qdtext allows its characters) of 8 bytes expiry, 2 bytes the client's
// port and 8 bytes MAC: 24 characters, the 401 kept small.
const nonceLen = 24

func (n *nonces) mac(exp uint64, key fiveTuple) []byte {
	m := hmac.New(sha256.New, n.key[:])
	var b [8 + 1 + 16 + 2]byte
	binary.BigEndian.PutUint64(b[:8], exp)
	b[8] = key.proto
	a := key.client.Addr().Unmap().As16()
	copy(b[9:25], a[:])
	binary.BigEndian.PutUint16(b[25:], key.client.Port())
	m.Write(b[:])
	return m.Sum(nil)[:8]
}

// issue returns a fresh nonce for the client at key.
func (n *nonces) issue(key fiveTuple, now time.Time) string {
	exp := uint64(now.Add(n.lifetime).UnixNano())
	var b [18]byte
	binary.BigEndian.PutUint64(b[:8], exp)
	binary.BigEndian.PutUint16(b[8:10], key.client.Port())
	copy(b[10:], n.mac(exp, key))
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// valid reports whether nonce was issued by n for key and has not expired.
// With anyPort, a nonce issued to another port of the same address and
// transport is good too: an RFC 6062 client data connection is a new
// connection whose ConnectionBind carries the control connection's nonce
// (pion's client does not retry it on 438).
func (n *nonces) valid(nonce string, key fiveTuple, now time.Time, anyPort bool) bool {
	if len(nonce) != nonceLen {
		return false
	}
	var b [18]byte
	if n, err := base64.RawURLEncoding.Decode(b[:], []byte(nonce)); err != nil || n != len(b) {
		return false
	}
	exp := binary.BigEndian.Uint64(b[:8])
	port := binary.BigEndian.Uint16(b[8:10])
	if port != key.client.Port() {
		if !anyPort {
			return false
		}
		key.client = netip.AddrPortFrom(key.client.Addr(), port)
	}
	if !hmac.Equal(b[10:], n.mac(exp, key)) {
		return false
	}
	return uint64(now.UnixNano()) < exp
}
