package relaywire

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"testing"
)

// v1Frame seals body as version 1 did: the version nibble 1 and
// AES-256-GCM under HKDF-SHA256(secret, "traverse relay link v1", info),
// 32 bytes, for the link 1-2 at epoch 1, sender 1.
func v1Frame(t *testing.T, secret []byte, typ Type, counter uint64, body []byte) []byte {
	t.Helper()
	var info [10]byte
	binary.BigEndian.PutUint32(info[0:], 1)
	binary.BigEndian.PutUint32(info[4:], 2)
	binary.BigEndian.PutUint16(info[8:], 1)
	k, err := hkdf.Key(sha256.New, secret, []byte("traverse relay link v1"), string(info[:]), 32)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := aes.NewCipher(k)
	a, _ := cipher.NewGCM(blk)
	f := AppendLinkHeader(nil, LinkHeader{Type: typ, Epoch: 1, Sender: 1, Counter: counter})
	f[1] = 1<<4 | byte(typ)
	return a.Seal(f, f[4:LinkHeaderLen], body, f[:LinkHeaderLen])
}

// TestVersion1Refused: a version-1 frame (its version nibble and its
// AES-256 key) is refused by a version-2 link with ErrVersion before any
// decryption, and the same frame relabelled version 2 fails its tag: v1
// and v2 keys are separate.
func TestVersion1Refused(t *testing.T) {
	l, err := NewLink(testSecret, 2, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	body := AppendData(nil, 1, []byte("media"))
	f := v1Frame(t, testSecret, TypeData, 5, body)
	if _, err := ParseLinkHeader(f); !errors.Is(err, ErrVersion) {
		t.Fatalf("ParseLinkHeader of a v1 frame: %v, want ErrVersion", err)
	}
	if _, _, err := l.Open(append([]byte(nil), f...)); !errors.Is(err, ErrVersion) {
		t.Fatalf("Open of a v1 frame: %v, want ErrVersion", err)
	}
	relabelled := append([]byte(nil), f...)
	relabelled[1] = Version<<4 | byte(TypeData)
	if _, _, err := l.Open(relabelled); !errors.Is(err, ErrAuth) {
		t.Fatalf("Open of a v1 frame relabelled v2: %v, want ErrAuth", err)
	}
	// a v2 frame of the same link still opens: the window was not moved
	a, _ := NewLink(testSecret, 1, 2, 1)
	if _, got, err := l.Open(a.Seal(nil, TypeData, body)); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("v2 frame: %q %v", got, err)
	}
	// a client's v1 frame likewise
	cs := ClientSecret(testSecret, "tok")
	node, _ := NewClientLink(cs, true, 9)
	cl, _ := NewClientLink(cs, false, 0)
	cf := cl.Seal(nil, TypeClient, []byte("x"))
	cf[1] = 1<<4 | byte(TypeClient)
	if _, _, err := node.Open(cf); !errors.Is(err, ErrVersion) {
		t.Fatalf("client v1 frame: %v, want ErrVersion", err)
	}
}

// TestKeyVector pins version 2's link and client keys: 16 bytes (AES-128),
// not a prefix of version 1's 32-byte keys.
func TestKeyVector(t *testing.T) {
	k, err := DeriveKey(testSecret, 2, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	const want = "dad5dd17d2986ea53a624adb318f5a8a" // checked with an independent HKDF (Python hmac)
	if got := hex.EncodeToString(k); got != want {
		t.Errorf("DeriveKey(7*32, 2, 1, 1) = %s, want %s", got, want)
	}
	var info [10]byte
	binary.BigEndian.PutUint32(info[0:], 1)
	binary.BigEndian.PutUint32(info[4:], 2)
	binary.BigEndian.PutUint16(info[8:], 1)
	v1, _ := hkdf.Key(sha256.New, testSecret, []byte("traverse relay link v1"), string(info[:]), 32)
	if len(k) != KeyLen || bytes.HasPrefix(v1, k) {
		t.Errorf("v2 key %x: want %d bytes, not a prefix of the v1 key %x", k, KeyLen, v1)
	}
	up, _ := hkdf.Key(sha256.New, ClientSecret(testSecret, "tok"), []byte("traverse relay client link v2"), "up", KeyLen)
	const wantUp = "a0f45d32cfb8ffe62c144a799ee5a8f0"
	if got := hex.EncodeToString(up); got != wantUp {
		t.Errorf("client up key = %s, want %s", got, wantUp)
	}
	// and it is the key a client seals with
	blk, _ := aes.NewCipher(up)
	a, _ := cipher.NewGCM(blk)
	cl, _ := NewClientLink(ClientSecret(testSecret, "tok"), false, 0)
	f := cl.Seal(nil, TypeClient, []byte("x"))
	if _, err := a.Open(nil, f[4:LinkHeaderLen], f[LinkHeaderLen:], f[:LinkHeaderLen]); err != nil {
		t.Errorf("a client frame does not open under the AES-128 up key: %v", err)
	}
}
