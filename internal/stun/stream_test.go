package stun

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/persource"
	"github.com/traverse-rtc/traverse/internal/tlsutil"
)

// streamServer is just enough of a Server to run serveConn.
func streamServer(t testing.TB) *Server {
	t.Helper()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := Config{Listen: netip.MustParseAddrPort("127.0.0.1:0")}.validate()
	return &Server{cfg: rc, log: slog.New(slog.DiscardHandler), m: m, ep: testEP, conns: map[net.Conn]struct{}{}, done: make(chan struct{})}
}

// FuzzStream feeds an arbitrary byte stream to one TCP/TLS connection's
// loop (the stream framing, then the handler): it must never panic or
// hang, and every answer it writes must be a whole STUN message.
func FuzzStream(f *testing.F) {
	plain := build(f, stun.BindingRequest, stun.Fingerprint)
	f.Add(plain)
	f.Add(append(append([]byte(nil), plain...), rfc5769Request...))
	f.Add(plain[:10])
	f.Add(mutate(plain, func(b []byte) []byte { b[3] = 0xff; return b }))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add(append(append([]byte(nil), plain...), 0x16, 0x03, 0x01))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	f.Fuzz(func(t *testing.T, data []byte) {
		s := streamServer(t)
		b, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		a, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		s.wg.Add(1)
		s.m.tcpConns.Inc()
		src := remoteAddr(a)
		s.perAddr.Take(persource.Key(src.Addr()), 1, 0)
		go s.serveConn(a, tcp, src, persource.Key(src.Addr()))
		answers := make(chan []byte, 1)
		go func() {
			got, _ := io.ReadAll(b)
			answers <- got
		}()
		_ = b.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = b.Write(data)
		// End of input: the loop returns once it has answered what came.
		_ = b.(*net.TCPConn).CloseWrite()
		done := make(chan struct{})
		go func() { s.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("connection loop hung")
		}
		got := <-answers
		for len(got) > 0 {
			if len(got) < 20 {
				t.Fatalf("partial answer: %x", got)
			}
			n := 20 + (int(got[2])<<8 | int(got[3]))
			if len(got) < n {
				t.Fatalf("truncated answer")
			}
			m := &stun.Message{Raw: got[:n]}
			if err := m.Decode(); err != nil {
				t.Fatalf("answer does not decode: %v", err)
			}
			got = got[n:]
		}
	})
}

func TestTLSCertificateFromFiles(t *testing.T) {
	cert, err := tlsutil.SelfSigned("test", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyDER, err := x509.MarshalECPrivateKey(cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Listen: netip.MustParseAddrPort("127.0.0.1:0"), TLSListen: netip.MustParseAddrPort("127.0.0.1:0"), TLSCert: certFile, TLSKey: keyFile, Readers: 1})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(t.Context()) }()
	defer func() { s.Close(); <-done }()
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	c, err := tls.Dial("tcp", s.TLSAddr().String(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("TLS with the configured certificate: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	req := build(t, stun.BindingRequest)
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	n, err := io.ReadAtLeast(c, buf, 20)
	if err != nil {
		t.Fatal(err)
	}
	m := &stun.Message{Raw: buf[:n]}
	if err := m.Decode(); err != nil || m.Type != stun.BindingSuccess {
		t.Fatalf("answer %v %v", m, err)
	}
}
