package srtpseal

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"sync"

	"github.com/pion/dtls/v3"
	"github.com/pion/dtls/v3/pkg/crypto/prf"
	"github.com/pion/dtls/v3/pkg/protocol/extension"
	"github.com/pion/dtls/v3/pkg/protocol/handshake"
	"github.com/pion/srtp/v3"
	"github.com/pion/webrtc/v4"
)

// Secrets collects, through pion's public hooks only, what one peer
// connection's DTLS handshake knows when the node is the DTLS server: the
// key log line (client random and master secret, written by pion/dtls as
// "CLIENT_RANDOM <hex> <hex>") and the ServerHello the node sends (server
// random, cipher suite, the use_srtp profile, RFC 5764 section 4.1.1).
// From them it derives the SRTP keys exactly as pion's DTLS transport does
// (RFC 5705 exporter, RFC 5764 section 4.2 key split). One Secrets per
// peer connection: the hooks are per SettingEngine, so every peer
// connection whose keys are wanted gets its own webrtc.API. The zero
// value is ready to Attach.
type Secrets struct {
	mu           sync.Mutex // guards the fields below
	clientRandom []byte
	masterSecret []byte
	serverRandom []byte
	suite        dtls.CipherSuiteID
	profile      srtp.ProtectionProfile
	hello        bool // the node sent a ServerHello: it is the DTLS server
}

// keyLogLabel is the label pion/dtls writes for TLS 1.2 master secrets
// (the NSS key log format).
const keyLogLabel = "CLIENT_RANDOM"

// Attach makes se's DTLS handshakes report to k: its key log writer and
// ServerHello hook, and the answering DTLS role "server" (the exporter
// needs the server's view: both randoms). It is the only place that
// couples to pion's DTLS internals.
func (k *Secrets) Attach(se *webrtc.SettingEngine) error {
	se.SetDTLSKeyLogWriter(keyLog{k})
	se.SetDTLSServerHelloMessageHook(k.serverHello)
	return se.SetAnsweringDTLSRole(webrtc.DTLSRoleServer)
}

// keyLog is Secrets' key log writer, kept off Secrets' API.
type keyLog struct{ k *Secrets }

// Write takes pion/dtls's key log lines. A line it cannot parse is
// ignored (the caller then falls back to pion for this peer connection).
func (l keyLog) Write(p []byte) (int, error) { return l.k.write(p) }

func (k *Secrets) write(p []byte) (int, error) {
	for _, line := range bytes.Split(p, []byte{'\n'}) {
		f := bytes.Fields(line)
		if len(f) != 3 || string(f[0]) != keyLogLabel {
			continue
		}
		cr, err1 := hex.DecodeString(string(f[1]))
		ms, err2 := hex.DecodeString(string(f[2]))
		if err1 != nil || err2 != nil || len(cr) != handshake.RandomLength || len(ms) == 0 {
			continue
		}
		k.mu.Lock()
		k.clientRandom, k.masterSecret = cr, ms
		k.mu.Unlock()
	}
	return len(p), nil
}

// serverHello is the DTLS ServerHello hook: it records the hello and
// sends it unchanged.
func (k *Secrets) serverHello(h handshake.MessageServerHello) handshake.Message {
	r := h.Random.MarshalFixed()
	k.mu.Lock()
	k.hello = true
	k.serverRandom = r[:]
	if h.CipherSuiteID != nil {
		k.suite = dtls.CipherSuiteID(*h.CipherSuiteID)
	}
	k.profile = 0
	for _, e := range h.Extensions {
		if u, ok := e.(*extension.UseSRTP); ok && len(u.ProtectionProfiles) == 1 {
			k.profile = srtpProfile(u.ProtectionProfiles[0])
		}
	}
	k.mu.Unlock()
	return &h
}

// srtpProfile maps a negotiated DTLS-SRTP profile to pion/srtp's; 0 for
// one it does not know.
func srtpProfile(p extension.SRTPProtectionProfile) srtp.ProtectionProfile {
	switch p {
	case extension.SRTP_AES128_CM_HMAC_SHA1_80:
		return srtp.ProtectionProfileAes128CmHmacSha1_80
	case extension.SRTP_AES128_CM_HMAC_SHA1_32:
		return srtp.ProtectionProfileAes128CmHmacSha1_32
	case extension.SRTP_AEAD_AES_128_GCM:
		return srtp.ProtectionProfileAeadAes128Gcm
	case extension.SRTP_AEAD_AES_256_GCM:
		return srtp.ProtectionProfileAeadAes256Gcm
	case extension.SRTP_NULL_HMAC_SHA1_80:
		return srtp.ProtectionProfileNullHmacSha1_80
	case extension.SRTP_NULL_HMAC_SHA1_32:
		return srtp.ProtectionProfileNullHmacSha1_32
	}
	return 0
}

// prfHash is the TLS 1.2 PRF hash of a cipher suite (RFC 5246 section 5:
// SHA-256 unless the suite names another); nil for a suite it does not
// know.
func prfHash(id dtls.CipherSuiteID) prf.HashFunc {
	switch id { //nolint:exhaustive
	case dtls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, dtls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384:
		return sha512.New384
	case dtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, dtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		dtls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, dtls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
		dtls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, dtls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		dtls.TLS_ECDHE_ECDSA_WITH_AES_128_CCM, dtls.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8:
		return sha256.New
	}
	return nil
}

// exporter is Secrets as a srtp.KeyingMaterialExporter, kept off
// Secrets' API.
type exporter struct{ k *Secrets }

// ExportKeyingMaterial is the RFC 5705 exporter without context, seeded
// client random then server random, as pion/dtls's State does.
func (e exporter) ExportKeyingMaterial(label string, context []byte, length int) ([]byte, error) {
	return e.k.export(label, context, length)
}

func (k *Secrets) export(label string, context []byte, length int) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(context) != 0 {
		return nil, fmt.Errorf("%w: exporter context", ErrNoKeys)
	}
	if !k.hello {
		return nil, fmt.Errorf("%w: the node is not the DTLS server", ErrNoKeys)
	}
	if len(k.masterSecret) == 0 || len(k.serverRandom) != handshake.RandomLength {
		return nil, fmt.Errorf("%w: handshake secrets not seen", ErrNoKeys)
	}
	h := prfHash(k.suite)
	if h == nil {
		return nil, fmt.Errorf("%w: cipher suite %#04x", ErrNoKeys, uint16(k.suite))
	}
	seed := make([]byte, 0, len(label)+2*handshake.RandomLength)
	seed = append(seed, label...)
	seed = append(seed, k.clientRandom...)
	seed = append(seed, k.serverRandom...)
	return prf.PHash(k.masterSecret, seed, length, h)
}

// Keys are one direction's SRTP master key and salt and the negotiated
// protection profile.
type Keys struct {
	Key, Salt []byte
	Profile   srtp.ProtectionProfile
}

// Local returns the node's (the DTLS server's) SRTP keys, which protect
// what the node sends, split as pion's DTLS transport does
// (srtp.Config.ExtractSessionKeysFromDTLS, server side). Its error wraps
// ErrNoKeys when the handshake did not give them.
func (k *Secrets) Local() (Keys, error) {
	c, err := k.sessionKeys()
	if err != nil {
		return Keys{}, err
	}
	return Keys{c.Keys.LocalMasterKey, c.Keys.LocalMasterSalt, c.Profile}, nil
}

// Remote returns the client's (the DTLS client's) SRTP keys, which
// protect what the client sends (RFC 5764 section 4.2:
// client_write_SRTP_master_key).
func (k *Secrets) Remote() (Keys, error) {
	c, err := k.sessionKeys()
	if err != nil {
		return Keys{}, err
	}
	return Keys{c.Keys.RemoteMasterKey, c.Keys.RemoteMasterSalt, c.Profile}, nil
}

func (k *Secrets) sessionKeys() (srtp.Config, error) {
	k.mu.Lock()
	profile := k.profile
	k.mu.Unlock()
	if profile == 0 {
		return srtp.Config{}, fmt.Errorf("%w: no SRTP profile negotiated", ErrNoKeys)
	}
	c := srtp.Config{Profile: profile}
	if err := c.ExtractSessionKeysFromDTLS(exporter{k}, false); err != nil {
		return srtp.Config{}, err
	}
	return c, nil
}
