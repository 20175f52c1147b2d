package signal

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/traverse-rtc/traverse/internal/testkit"
	"github.com/traverse-rtc/traverse/internal/tlsutil"
)

// TestTLS: with Config.TLS the listener speaks HTTPS and WSS only: a
// client that trusts the certificate joins over wss://, a plain http://
// request gets no answer it can use.
func TestTLS(t *testing.T) {
	cert, err := tlsutil.SelfSigned("traverse signal", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	s, _, _ := newServer(t, func(c *Config) {
		c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		c.API.AdminToken = testAdmin
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, func(ctx context.Context) error {
		go func() { <-ctx.Done(); _ = s.Close() }()
		return s.Serve(ln)
	})
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "wss://"+ln.Addr().String()+"/ws", &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		t.Fatalf("wss: %v", err)
	}
	c := &testClient{t: t, conn: conn}
	c.send(map[string]any{"type": "join", "token": token(t, Claims{Room: "r", Identity: "alice", Subscribe: true})})
	if m := c.recv(); m.Type != TypeJoined {
		t.Fatalf("over wss: %+v", m)
	}
	_ = conn.Close(websocket.StatusNormalClosure, "")

	req, _ := http.NewRequest("GET", "https://"+ln.Addr().String()+"/v1/rooms", nil)
	req.Header.Set("Authorization", "Bearer "+testAdmin)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil {
		t.Fatalf("https room API: %d", resp.StatusCode)
	}
	// Plain HTTP on the TLS port: net/http answers a TLS server's
	// "client sent an HTTP request to an HTTPS server" 400, never the API.
	resp, err = (&http.Client{Timeout: 5 * time.Second}).Get("http://" + ln.Addr().String() + "/v1/rooms")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("plain http on the TLS port: %d", resp.StatusCode)
		}
	} else if !strings.Contains(err.Error(), "EOF") && !strings.Contains(err.Error(), "malformed") {
		t.Logf("plain http: %v", err)
	}
}
