package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestSelfSignedCoversHosts(t *testing.T) {
	c, err := SelfSigned("test", "192.0.2.7:5061", "sip.example.net", "0.0.0.0")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"localhost", "127.0.0.1", "::1", "192.0.2.7", "sip.example.net"} {
		if err := leaf.VerifyHostname(h); err != nil {
			t.Errorf("not valid for %s: %v", h, err)
		}
	}
	for _, ip := range leaf.IPAddresses {
		if ip.Equal(net.IPv4zero) {
			t.Error("certificate names the unspecified address")
		}
	}
}

func TestServerConfig(t *testing.T) {
	if _, err := ServerConfig("a.pem", "", "x"); !errors.Is(err, ErrHalfPair) {
		t.Errorf("half pair: %v, want ErrHalfPair", err)
	}
	if _, err := ServerConfig("/nonexistent/c.pem", "/nonexistent/k.pem", "x"); err == nil {
		t.Error("missing files accepted")
	}
	// A pair written to files loads back.
	c, err := SelfSigned("files")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	cfg, err := ServerConfig(certFile, keyFile, "x")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS12 || len(cfg.Certificates) != 1 {
		t.Errorf("config %+v", cfg)
	}
	if cfg, err := ServerConfig("", "", "x", "localhost"); err != nil || len(cfg.Certificates) != 1 {
		t.Errorf("self-signed config: %v", err)
	}
}
