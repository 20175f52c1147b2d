package p2p

import (
	"bytes"
	"crypto/rand"
	"fmt"

	"github.com/flynn/noise"
)

// Keys: the peers run the Noise XX handshake
// (Noise_XX_25519_ChaChaPoly_BLAKE2s) through signaling. Its prologue binds
// the session to the two names the signaling service vouches for (the
// identities in their tokens) and to the rendezvous, so that a handshake
// relayed for other names fails. Each peer's static key is fresh per Conn
// unless WithStaticKey gives one; WithPeerKey pins the peer's, so that not
// even the signaling service can stand in the middle. The handshake's
// Split gives one key per direction; datagrams carry their nonce
// explicitly (wire.go) because UDP loses and reorders.

var cipherSuite = noise.NewCipherSuite(noise.DH25519, noise.CipherChaChaPoly, noise.HashBLAKE2s)

// GenerateKey returns a new static X25519 key pair for WithStaticKey.
func GenerateKey() (private, public []byte, err error) {
	kp, err := cipherSuite.GenerateKeypair(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	return kp.Private, kp.Public, nil
}

// prologue binds the handshake to the rendezvous and both names.
func prologue(initiator, responder string) []byte {
	var b bytes.Buffer
	b.WriteString("traverse-p2p/1\x00")
	b.WriteString(initiator)
	b.WriteByte(0)
	b.WriteString(responder)
	return b.Bytes()
}

// handshake is one side's Noise state.
type handshake struct {
	hs        *noise.HandshakeState
	initiator bool
	peerKey   []byte // pinned, or nil
}

func newHandshake(initiator bool, static noise.DHKey, peerKey []byte, pro []byte) (*handshake, error) {
	hs, err := noise.NewHandshakeState(noise.Config{CipherSuite: cipherSuite, Random: rand.Reader,
		Pattern: noise.HandshakeXX, Initiator: initiator, Prologue: pro, StaticKeypair: static})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrHandshake, err)
	}
	return &handshake{hs: hs, initiator: initiator, peerKey: peerKey}, nil
}

// sessionKeys is what a finished handshake gives.
type sessionKeys struct {
	send, recv noise.Cipher
	session    [8]byte
	peerStatic []byte
}

func (h *handshake) finish(cs1, cs2 *noise.CipherState) (*sessionKeys, error) {
	ps := h.hs.PeerStatic()
	if h.peerKey != nil && !bytes.Equal(ps, h.peerKey) {
		return nil, fmt.Errorf("%w: peer static key is not the pinned one", ErrHandshake)
	}
	k := &sessionKeys{peerStatic: append([]byte(nil), ps...)}
	copy(k.session[:], h.hs.ChannelBinding())
	if h.initiator {
		k.send, k.recv = cs1.Cipher(), cs2.Cipher()
	} else {
		k.send, k.recv = cs2.Cipher(), cs1.Cipher()
	}
	return k, nil
}

// write makes the next handshake message; keys are non-nil when it was
// the last.
func (h *handshake) write() ([]byte, *sessionKeys, error) {
	msg, cs1, cs2, err := h.hs.WriteMessage(nil, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrHandshake, err)
	}
	if cs1 == nil {
		return msg, nil, nil
	}
	k, err := h.finish(cs1, cs2)
	return msg, k, err
}

// read takes the peer's next handshake message.
func (h *handshake) read(msg []byte) (*sessionKeys, error) {
	_, cs1, cs2, err := h.hs.ReadMessage(nil, msg)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrHandshake, err)
	}
	if cs1 == nil {
		return nil, nil
	}
	return h.finish(cs1, cs2)
}
