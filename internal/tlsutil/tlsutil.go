// Package tlsutil gives every TLS listener of traverse (STUN, TURN, SIP)
// one way to load its certificate, or to make a self-signed one for local
// use when the operator gave none.
package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// ErrHalfPair means only one of the certificate and key files was given.
var ErrHalfPair = errors.New("tlsutil: give both a certificate and a key file, or neither")

// SelfSigned makes a P-256 certificate valid for a year from now for
// localhost, the loopback addresses and each host (an IP or a DNS name;
// unspecified addresses are left out). Clients that verify certificates
// refuse it, as they should: it is for tests and first runs.
func SelfSigned(commonName string, hosts ...string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tlsutil: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tlsutil: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: commonName + " (self-signed)"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	for _, h := range hosts {
		if host, _, err := net.SplitHostPort(h); err == nil {
			h = host
		}
		switch ip := net.ParseIP(h); {
		case ip != nil && !ip.IsUnspecified():
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		case ip == nil && h != "" && h != "localhost":
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tlsutil: self-signed certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// ServerConfig loads the certificate pair from certFile and keyFile, or
// makes a self-signed one (see SelfSigned) when both are empty. The config
// requires TLS 1.2 or newer.
func ServerConfig(certFile, keyFile, commonName string, hosts ...string) (*tls.Config, error) {
	var cert tls.Certificate
	var err error
	switch {
	case certFile != "" && keyFile != "":
		cert, err = tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("tlsutil: %w", err)
		}
	case certFile != "" || keyFile != "":
		return nil, ErrHalfPair
	default:
		cert, err = SelfSigned(commonName, hosts...)
		if err != nil {
			return nil, err
		}
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
