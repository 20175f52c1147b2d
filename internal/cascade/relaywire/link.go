package relaywire

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"sync"
	"time"
)

// MinSecret is the shortest cluster secret accepted (32 bytes, 256 bits).
const MinSecret = 32

// ErrSecret is returned for a cluster secret shorter than MinSecret.
var ErrSecret = errors.New("relaywire: cluster secret shorter than 32 bytes")

// hkdfSalt separates this protocol's keys from anything else derived from
// the same secret, and version 2's keys from version 1's (AES-256 keys
// under the salt "traverse relay link v1": without the new salt a v2 key
// would be the first half of the v1 key, since HKDF's output for one
// salt and info is a prefix of its longer output).
const hkdfSalt = "traverse relay link v2"

// KeyLen is the size of every AEAD key of the protocol (link and client
// keys): AES-128-GCM since version 2, the strength of the SRTP that WebRTC
// media has (docs/relay-protocol.md, "Keys, nonces, replay").
const KeyLen = 16

// DeriveKey derives the AES-128-GCM key of the link between nodes a and b
// for one epoch: HKDF-SHA256 with the cluster secret as input keying
// material, hkdfSalt as salt, and info = lower node id, higher node id,
// epoch (4+4+2 bytes, big endian), KeyLen bytes. Both ends derive the same
// key; the nonces of the two directions differ by the sender id.
func DeriveKey(secret []byte, a, b NodeID, epoch uint16) ([]byte, error) {
	if len(secret) < MinSecret {
		return nil, ErrSecret
	}
	if a > b {
		a, b = b, a
	}
	var info [10]byte
	binary.BigEndian.PutUint32(info[0:], uint32(a))
	binary.BigEndian.PutUint32(info[4:], uint32(b))
	binary.BigEndian.PutUint16(info[8:], epoch)
	return hkdf.Key(sha256.New, secret, []byte(hkdfSalt), string(info[:]), KeyLen)
}

// Link seals frames for one peer and opens the peer's frames: it holds the
// link's key for the current epoch (and the previous one, for frames in
// flight across a rotation), the send counter and the receive replay
// window. Seal is safe for concurrent use; Open is meant for the one
// reader loop but is safe too.
type Link struct {
	local, peer NodeID
	secret      []byte

	// mu guards the send counter, the keys and the replay window; Seal
	// and Open take it per frame, Hold for a run of frames (SealHeld,
	// OpenHeld).
	mu       sync.Mutex
	counter  uint64 // last counter sealed
	epoch    uint16
	cur      cipher.AEAD
	prev     cipher.AEAD // nil when there was no previous epoch
	prevEpch uint16
	next     cipher.AEAD // epoch+1, opened before this node rotates
	window   Window
}

// NewLink returns the link from local to peer at epoch. The send counter
// starts at the wall clock in nanoseconds: a node that restarts sends
// counters above any it sent before (it sends far fewer than 1e9 frames a
// second), so its peer's replay window accepts it and no nonce repeats
// under the same key.
func NewLink(secret []byte, local, peer NodeID, epoch uint16) (*Link, error) {
	l := &Link{local: local, peer: peer, secret: append([]byte(nil), secret...)}
	a, err := newAEAD(secret, local, peer, epoch)
	if err != nil {
		return nil, err
	}
	n, err := newAEAD(secret, local, peer, epoch+1)
	if err != nil {
		return nil, err
	}
	l.epoch, l.cur, l.next = epoch, a, n
	l.counter = uint64(time.Now().UnixNano())
	return l, nil
}

func newAEAD(secret []byte, a, b NodeID, epoch uint16) (cipher.AEAD, error) {
	k, err := DeriveKey(secret, a, b, epoch)
	if err != nil {
		return nil, err
	}
	return newGCM(k)
}

// newGCM is AES-GCM under key (KeyLen bytes: AES-128).
func newGCM(key []byte) (cipher.AEAD, error) {
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(blk)
}

// Peer is the node at the other end.
func (l *Link) Peer() NodeID { return l.peer }

// Rotate moves the link to a new epoch: frames are sealed under it from
// now on; frames under the previous epoch are still opened, and so are
// frames under the epoch after the new one. Since a link always opens
// epoch+1, the nodes of a cluster may rotate in any order when each
// rotation steps the epoch by one: a node that rotated first is
// understood by peers that have not yet.
func (l *Link) Rotate(epoch uint16) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if epoch == l.epoch {
		return nil
	}
	a := l.next
	if epoch != l.epoch+1 {
		var err error
		if a, err = newAEAD(l.secret, l.local, l.peer, epoch); err != nil {
			return err
		}
	}
	n, err := newAEAD(l.secret, l.local, l.peer, epoch+1)
	if err != nil {
		return err
	}
	l.prev, l.prevEpch = l.cur, l.epoch
	l.cur, l.epoch, l.next = a, epoch, n
	return nil
}

// Retire drops the previous epoch's key (the overlap after a rotation is
// over): its frames fail with ErrEpoch from now on.
func (l *Link) Retire() {
	l.mu.Lock()
	l.prev = nil
	l.mu.Unlock()
}

// Seal appends a frame of type t carrying body to dst: the link header in
// clear (authenticated as additional data), then body encrypted, then the
// tag. dst and body must not overlap.
func (l *Link) Seal(dst []byte, t Type, body []byte) []byte {
	l.mu.Lock()
	l.counter++
	c, a, epoch := l.counter, l.cur, l.epoch
	l.mu.Unlock()
	return seal(dst, a, LinkHeader{Type: t, Epoch: epoch, Sender: l.local, Counter: c}, body)
}

func seal(dst []byte, a cipher.AEAD, h LinkHeader, body []byte) []byte {
	start := len(dst)
	dst = AppendLinkHeader(dst, h)
	// The nonce is the header's sender and counter (bytes 4-15): unique per
	// key, and taken from the frame so that nothing escapes to the heap.
	return a.Seal(dst, dst[start+4:start+LinkHeaderLen], body, dst[start:])
}

// Hold takes the link's lock for a run of SealHeld and OpenHeld calls: a
// relay hop seals a read batch's frames for one next hop (and opens a
// run of frames from one peer) with one lock round trip, not one per
// frame. Release gives it back; nothing else on the link runs between.
func (l *Link) Hold() { l.mu.Lock() }

// Release ends what Hold began.
func (l *Link) Release() { l.mu.Unlock() }

// SealHeld is Seal for the holder of the link's lock (Hold).
func (l *Link) SealHeld(dst []byte, t Type, body []byte) []byte {
	l.counter++
	return seal(dst, l.cur, LinkHeader{Type: t, Epoch: l.epoch, Sender: l.local, Counter: l.counter}, body)
}

// Open authenticates and decrypts frame in place and returns its header
// and body (pointing into frame). It checks, in order: the header, that
// the sender is this link's peer, the epoch, that the counter is not
// replayed (before spending a decryption on it), the tag, and only then
// records the counter in the window.
func (l *Link) Open(frame []byte) (LinkHeader, []byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.OpenHeld(frame)
}

// OpenHeld is Open for the holder of the link's lock (Hold): each frame
// still gets its own replay check.
func (l *Link) OpenHeld(frame []byte) (LinkHeader, []byte, error) {
	h, err := ParseLinkHeader(frame)
	if err != nil {
		return h, nil, err
	}
	if h.Sender != l.peer {
		return h, nil, ErrPeer
	}
	if len(frame) < Overhead {
		return h, nil, ErrShort
	}
	var a cipher.AEAD
	switch {
	case h.Epoch == l.epoch:
		a = l.cur
	case l.prev != nil && h.Epoch == l.prevEpch:
		a = l.prev
	case h.Epoch == l.epoch+1:
		a = l.next
	default:
		return h, nil, ErrEpoch
	}
	if !l.window.Check(h.Counter) {
		return h, nil, ErrReplay
	}
	ct := frame[LinkHeaderLen:]
	body, err := a.Open(ct[:0], frame[4:LinkHeaderLen], ct, frame[:LinkHeaderLen])
	if err != nil {
		return h, nil, ErrAuth
	}
	l.window.Accept(h.Counter)
	return h, body, nil
}

// WindowSize is how many counters behind the highest seen the replay
// window still accepts (once each); older ones are dropped as replays.
const WindowSize = 1024

const windowWords = WindowSize / 64

// Window is a sliding replay window over 64-bit counters (the scheme of
// RFC 6479 and WireGuard): a bitmap of the last WindowSize counters below
// the highest accepted. The zero value accepts any counter above 0.
type Window struct {
	top  uint64 // highest counter accepted
	bits [windowWords]uint64
}

// Check reports whether c would be accepted (not zero, not seen, not older
// than the window) without recording it.
func (w *Window) Check(c uint64) bool {
	if c == 0 {
		return false
	}
	if c > w.top {
		return true
	}
	if w.top-c >= WindowSize {
		return false
	}
	i := c % WindowSize
	return w.bits[i/64]&(1<<(i%64)) == 0
}

// Accept records c, which Check accepted.
func (w *Window) Accept(c uint64) {
	if c > w.top {
		if c-w.top >= WindowSize {
			w.bits = [windowWords]uint64{}
		} else {
			for x := w.top + 1; x < c; x++ {
				i := x % WindowSize
				w.bits[i/64] &^= 1 << (i % 64)
			}
		}
		w.top = c
	}
	i := c % WindowSize
	w.bits[i/64] |= 1 << (i % 64)
}
