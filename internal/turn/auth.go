package turn

import (
	"crypto/hmac"
	"crypto/md5" //nolint:gosec // RFC 8489 section 9.2.2 long-term key is MD5.
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // TURN REST API passwords are HMAC-SHA1.
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
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
// "EXPIRY:user"). ok is false when the name is not of that form.
func restExpiry(username string) (time.Time, bool) {
	ts := username
	if i := strings.IndexByte(username, ':'); i >= 0 {
		ts = username[:i]
	}
	if ts == "" || len(ts) > 19 {
		return time.Time{}, false
	}
	n, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, false
	}
	return time.Unix(n, 0), true
}

// longTermKey is RFC 8489 section 9.2.2's key: MD5(user:realm:password).
func longTermKey(user, realm, password string) []byte {
	h := md5.Sum([]byte(user + ":" + realm + ":" + password)) //nolint:gosec
	return h[:]
}

// nonces are stateless: the expiry time and a MAC over it and the client's
// IP address, so a nonce is good for one client address and NonceLifetime.
type nonces struct {
	key      [32]byte
	lifetime time.Duration
}

func newNonces(lifetime time.Duration) *nonces {
	n := &nonces{lifetime: lifetime}
	_, _ = rand.Read(n.key[:])
	return n
}

const nonceLen = 32 // hex of 8 bytes expiry + 8 bytes MAC

func (n *nonces) mac(exp uint64, ip netip.Addr) []byte {
	m := hmac.New(sha256.New, n.key[:])
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], exp)
	m.Write(b[:])
	a := ip.Unmap().As16()
	m.Write(a[:])
	return m.Sum(nil)[:8]
}

// issue returns a fresh nonce for ip.
func (n *nonces) issue(ip netip.Addr, now time.Time) string {
	exp := uint64(now.Add(n.lifetime).UnixNano())
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], exp)
	copy(b[8:], n.mac(exp, ip))
	return hex.EncodeToString(b[:])
}

// valid reports whether nonce was issued by n for ip and has not expired.
func (n *nonces) valid(nonce string, ip netip.Addr, now time.Time) bool {
	if len(nonce) != nonceLen {
		return false
	}
	var b [16]byte
	if _, err := hex.Decode(b[:], []byte(nonce)); err != nil {
		return false
	}
	exp := binary.BigEndian.Uint64(b[:8])
	if !hmac.Equal(b[8:], n.mac(exp, ip)) {
		return false
	}
	return uint64(now.UnixNano()) < exp
}
