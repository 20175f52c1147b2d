package srtpseal

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/dtls/v3/pkg/crypto/selfsign"
	"github.com/pion/srtp/v3"
)

// TestDTLSSecretsExporter runs real pion/dtls handshakes (the node as the
// DTLS server, its ServerHello hook and key log going to a Secrets)
// and checks that the exporter built from them gives exactly what pion's
// own connection state exports, for each cipher suite hash and SRTP
// profile WebRTC uses. Each case runs one handshake and compares the
// exporter, the local keys and the remote keys (by decrypting the
// client's packet) against pion's own, in order: hence its length.
func TestDTLSSecretsExporter(t *testing.T) {
	for _, tc := range []struct {
		name    string
		suite   dtls.CipherSuiteID
		profile dtls.SRTPProtectionProfile
		ems     dtls.ExtendedMasterSecretType
	}{
		{"gcm-sha256", dtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, dtls.SRTP_AEAD_AES_128_GCM, dtls.RequireExtendedMasterSecret},
		{"gcm-sha384", dtls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, dtls.SRTP_AEAD_AES_256_GCM, dtls.RequestExtendedMasterSecret},
		{"cbc-sha", dtls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, dtls.SRTP_AES128_CM_HMAC_SHA1_80, dtls.DisableExtendedMasterSecret},
		{"chacha", dtls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, dtls.SRTP_AES128_CM_HMAC_SHA1_80, dtls.RequestExtendedMasterSecret},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var k Secrets
			srv, cli := handshakePair(t, &k, tc.suite, tc.profile, tc.ems)
			defer srv.Close()
			defer cli.Close()
			st, ok := srv.ConnectionState()
			if !ok {
				t.Fatal("no server connection state")
			}
			want, err := st.ExportKeyingMaterial("EXTRACTOR-dtls_srtp", nil, 60)
			if err != nil {
				t.Fatal(err)
			}
			got, err := exporter{&k}.ExportKeyingMaterial("EXTRACTOR-dtls_srtp", nil, 60)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("exporter differs:\n got %x\nwant %x", got, want)
			}
			// The keys pion's DTLS transport would give the server side.
			prof := srtpProfile(tc.profile)
			c := srtp.Config{Profile: prof}
			if err := c.ExtractSessionKeysFromDTLS(&st, false); err != nil {
				t.Fatal(err)
			}
			local, err := k.Local()
			key, salt, p := local.Key, local.Salt, local.Profile
			if err != nil {
				t.Fatal(err)
			}
			if p != prof || !bytes.Equal(key, c.Keys.LocalMasterKey) || !bytes.Equal(salt, c.Keys.LocalMasterSalt) {
				t.Fatalf("local keys %x/%x (%v), want %x/%x (%v)", key, salt, p, c.Keys.LocalMasterKey, c.Keys.LocalMasterSalt, prof)
			}
			// The remote keys decrypt what the client side (pion's DTLS
			// client, keys extracted as its DTLS transport does) sends.
			remote, err := k.Remote()
			rkey, rsalt := remote.Key, remote.Salt
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(rkey, c.Keys.RemoteMasterKey) || !bytes.Equal(rsalt, c.Keys.RemoteMasterSalt) {
				t.Fatalf("remote keys %x/%x, want %x/%x", rkey, rsalt, c.Keys.RemoteMasterKey, c.Keys.RemoteMasterSalt)
			}
			cst, ok := cli.ConnectionState()
			if !ok {
				t.Fatal("no client connection state")
			}
			cc := srtp.Config{Profile: prof}
			if err := cc.ExtractSessionKeysFromDTLS(&cst, true); err != nil {
				t.Fatal(err)
			}
			enc, err := srtp.CreateContext(cc.Keys.LocalMasterKey, cc.Keys.LocalMasterSalt, prof)
			if err != nil {
				t.Fatal(err)
			}
			dec, err := srtp.CreateContext(rkey, rsalt, prof)
			if err != nil {
				t.Fatal(err)
			}
			plain := []byte{0x80, 96, 0, 1, 0, 0, 0, 9, 0xca, 0xfe, 0xba, 0xbe, 'h', 'e', 'l', 'l', 'o'}
			sealed, err := enc.EncryptRTP(nil, plain, nil)
			if err != nil {
				t.Fatal(err)
			}
			opened, err := dec.DecryptRTP(nil, sealed, nil)
			if err != nil || !bytes.Equal(opened, plain) {
				t.Fatalf("client's RTP opened with the remote keys: %x, %v; want %x", opened, err, plain)
			}
		})
	}
	t.Run("not-server", func(t *testing.T) {
		var k Secrets
		if _, err := k.Local(); !errors.Is(err, ErrNoKeys) {
			t.Fatal("keys without a handshake")
		}
		_, _ = keyLog{&k}.Write([]byte("CLIENT_RANDOM 00 11\nnonsense\n"))
		if _, err := (exporter{&k}).ExportKeyingMaterial("EXTRACTOR-dtls_srtp", nil, 60); err == nil {
			t.Fatal("exported without a ServerHello")
		}
	})
}

// handshakePair connects a pion/dtls client to a server that reports to k.
func handshakePair(t *testing.T, k *Secrets, suite dtls.CipherSuiteID, profile dtls.SRTPProtectionProfile,
	ems dtls.ExtendedMasterSecretType,
) (*dtls.Conn, *dtls.Conn) {
	t.Helper()
	cert, err := selfsign.GenerateSelfSigned()
	if err != nil {
		t.Fatal(err)
	}
	sc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := dtls.ServerWithOptions(sc, cc.LocalAddr(),
		dtls.WithCertificates(cert), dtls.WithCipherSuites(suite), dtls.WithSRTPProtectionProfiles(profile),
		dtls.WithExtendedMasterSecret(ems), dtls.WithKeyLogWriter(keyLog{k}), dtls.WithServerHelloMessageHook(k.serverHello),
		dtls.WithInsecureSkipVerify(true))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := dtls.ClientWithOptions(cc, sc.LocalAddr(),
		dtls.WithCertificates(cert), dtls.WithCipherSuites(suite), dtls.WithSRTPProtectionProfiles(profile),
		dtls.WithExtendedMasterSecret(ems), dtls.WithInsecureSkipVerify(true))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- srv.HandshakeContext(ctx) }()
	if err := cli.HandshakeContext(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return srv, cli
}
