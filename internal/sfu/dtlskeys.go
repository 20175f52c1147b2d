package sfu

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
)

// dtlsSecrets collects, through pion's public hooks only, what one peer
// connection's DTLS handshake knows when the node is the DTLS server: the
// key log line (client random and master secret, written by pion/dtls as
// "CLIENT_RANDOM <hex> <hex>") and the ServerHello the node sends (server
// random, cipher suite, the use_srtp profile, RFC 5764 section 4.1.1).
// From them it derives the SRTP keys exactly as pion's DTLS transport does
// (RFC 5705 exporter, RFC 5764 section 4.2 key split). One dtlsSecrets per
// peer connection: the hooks are per SettingEngine, so every peer
// connection of an own-path node gets its own webrtc.API.
type dtlsSecrets struct {
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

// Write takes pion/dtls's key log lines. A line it cannot parse is
// ignored (the own data path then falls back for this peer connection).
func (k *dtlsSecrets) Write(p []byte) (int, error) {
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
func (k *dtlsSecrets) serverHello(h handshake.MessageServerHello) handshake.Message {
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

// ExportKeyingMaterial is the RFC 5705 exporter without context, seeded
// client random then server random, as pion/dtls's State does: it makes
// dtlsSecrets a srtp.KeyingMaterialExporter.
func (k *dtlsSecrets) ExportKeyingMaterial(label string, context []byte, length int) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(context) != 0 {
		return nil, fmt.Errorf("%w: exporter context", ErrFastPathKeys)
	}
	if !k.hello {
		return nil, fmt.Errorf("%w: the node is not the DTLS server", ErrFastPathKeys)
	}
	if len(k.masterSecret) == 0 || len(k.serverRandom) != handshake.RandomLength {
		return nil, fmt.Errorf("%w: handshake secrets not seen", ErrFastPathKeys)
	}
	h := prfHash(k.suite)
	if h == nil {
		return nil, fmt.Errorf("%w: cipher suite %#04x", ErrFastPathKeys, uint16(k.suite))
	}
	seed := make([]byte, 0, len(label)+2*handshake.RandomLength)
	seed = append(seed, label...)
	seed = append(seed, k.clientRandom...)
	seed = append(seed, k.serverRandom...)
	return prf.PHash(k.masterSecret, seed, length, h)
}

// localKeys returns the node's (the DTLS server's) SRTP master key and
// salt and the negotiated profile, split as pion's DTLS transport does
// (srtp.Config.ExtractSessionKeysFromDTLS, server side).
func (k *dtlsSecrets) localKeys() (key, salt []byte, profile srtp.ProtectionProfile, err error) {
	c, err := k.sessionKeys()
	if err != nil {
		return nil, nil, 0, err
	}
	return c.Keys.LocalMasterKey, c.Keys.LocalMasterSalt, c.Profile, nil
}

// remoteKeys returns the client's (the DTLS client's) SRTP master key and
// salt, which protect what the client sends (RFC 5764 section 4.2:
// client_write_SRTP_master_key), and the negotiated profile.
func (k *dtlsSecrets) remoteKeys() (key, salt []byte, profile srtp.ProtectionProfile, err error) {
	c, err := k.sessionKeys()
	if err != nil {
		return nil, nil, 0, err
	}
	return c.Keys.RemoteMasterKey, c.Keys.RemoteMasterSalt, c.Profile, nil
}

func (k *dtlsSecrets) sessionKeys() (srtp.Config, error) {
	k.mu.Lock()
	profile := k.profile
	k.mu.Unlock()
	if profile == 0 {
		return srtp.Config{}, fmt.Errorf("%w: no SRTP profile negotiated", ErrFastPathKeys)
	}
	c := srtp.Config{Profile: profile}
	if err := c.ExtractSessionKeysFromDTLS(k, false); err != nil {
		return srtp.Config{}, err
	}
	return c, nil
}
