package bus

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/traverse-rtc/traverse/internal/tlsutil"
)

// Over TLS: a role that trusts the bus's CA connects with its credentials;
// one that does not trust it is refused before any credential is sent; a
// bus that requires client certificates refuses a client without one.
func TestEmbeddedTLS(t *testing.T) {
	cert, err := tlsutil.SelfSigned("traverse bus test")
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	id, err := NewIdentity(RoleSignal, "")
	if err != nil {
		t.Fatal(err)
	}
	e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", Identities: []*Identity{id},
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	c, err := Connect(Config{URLs: []string{e.URL()}, Identity: id, TLSCA: ca}, nil)
	if err != nil {
		t.Fatalf("TLS with the CA: %v", err)
	}
	if !c.Conn().TLSRequired() {
		t.Error("connection not over TLS")
	}
	c.Close()
	if c, err := Connect(Config{URLs: []string{e.URL()}, Identity: id}, nil); err == nil {
		c.Close()
		t.Error("connected without trusting the bus's certificate")
	}

	pool := x509.NewCertPool()
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	pool.AddCert(leaf)
	m, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", Identities: []*Identity{id},
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
			MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if c, err := Connect(Config{URLs: []string{m.URL()}, Identity: id, TLSCA: ca}, nil); err == nil {
		c.Close()
		t.Error("mutual TLS bus accepted a client without a certificate")
	}
}
