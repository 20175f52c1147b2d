package signal

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/traverse-rtc/traverse/internal/testkit"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/metricstest"
)

// serving runs a Server on Config.Listen (a free loopback port) and
// returns its address (host:port).
func serving(t *testing.T, mod func(*Config)) (*Server, string, *prometheus.Registry) {
	t.Helper()
	s, _, reg := newServer(t, func(c *Config) {
		c.Listen = netip.MustParseAddrPort("127.0.0.1:0")
		if mod != nil {
			mod(c)
		}
	})
	testkit.Run(t, s.Run)
	return s, s.Addr().String(), reg
}

// TestRunNeedsListen: Run without Config.Listen is a configuration error,
// and Close alone releases the port New bound.
func TestRunNeedsListen(t *testing.T) {
	s, _, _ := newServer(t, nil)
	if err := s.Run(t.Context()); !errors.Is(err, ErrConfig) {
		t.Fatalf("Run without Listen: %v, want ErrConfig", err)
	}
	s2, _, _ := newServer(t, func(c *Config) { c.Listen = netip.MustParseAddrPort("127.0.0.1:0") })
	addr := s2.Addr()
	_ = s2.Close()
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatalf("port not released by Close: %v", err)
	}
	ln.Close()
}

// dialWSFrom opens a WebSocket to addr from the local address src.
func dialWSFrom(t *testing.T, src, addr string, hdr http.Header) (*testClient, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+addr+"/ws", &websocket.DialOptions{HTTPHeader: hdr,
		HTTPClient: &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("%w (status %d)", err, resp.StatusCode)
		}
		return nil, err
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	return &testClient{t: t, conn: c}, nil
}

func openFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(es)
}

// TestIdleConnectionFlood mounts the attack of issue 10 item 5: thousands
// of idle TCP connections (some after one keep-alive request) from one
// address. The server holds at most the per-address cap of them, its
// descriptors and goroutines stay bounded, a normal client from another
// address joins meanwhile, and the header and idle timeouts close what was
// held.
func TestIdleConnectionFlood(t *testing.T) {
	const perAddr, flood = 100, 3000
	_, addr, reg := serving(t, func(c *Config) {
		c.MaxConnsPerAddr = perAddr
		c.ReadHeaderTimeout = time.Second
		c.IdleTimeout = time.Second
	})
	fds0, gr0 := openFDs(t), runtime.NumGoroutine()

	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	var flooders []net.Conn
	defer func() {
		for _, c := range flooders {
			_ = c.Close()
		}
	}()
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; i < flood && time.Now().Before(deadline); i++ {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("flood dial %d: %v", i, err)
		}
		if i%2 == 0 {
			// One keep-alive request, then idle; refused connections
			// fail the write or the read, which is fine.
			_, _ = fmt.Fprintf(c, "GET /nothing HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
		}
		flooders = append(flooders, c)
	}
	if len(flooders) != flood {
		t.Fatalf("only %d flood connections in time", len(flooders))
	}

	// Meanwhile: a normal client joins.
	start := time.Now()
	c, err := dialWSFrom(t, "127.0.0.3", addr, nil)
	if err != nil {
		t.Fatalf("normal client during the flood: %v", err)
	}
	c.send(map[string]any{"type": "join", "token": token(t, Claims{Room: "r", Identity: "alice", Publish: true, Subscribe: true})})
	if m := c.recv(); m.Type != TypeJoined {
		t.Fatalf("normal client's join: %+v", m)
	}
	t.Logf("normal client joined in %v with %d idle connections from one address", time.Since(start), flood)

	open := metricstest.Value(t, reg, "traverse_listener_connections_open")
	fds, grs := openFDs(t)-fds0, runtime.NumGoroutine()-gr0
	t.Logf("server holds %v connections; descriptors +%d (%d of them the test's own client ends), goroutines +%d", open, fds, flood, grs)
	if open > perAddr+1 {
		t.Fatalf("server holds %v connections, cap %d+1", open, perAddr)
	}
	// The flood's own client ends are in this process too: without the cap
	// the server would add another descriptor for each.
	if fds > flood+perAddr+50 {
		t.Fatalf("descriptors grew by %d for %d flood connections (cap %d)", fds, flood, perAddr)
	}
	if grs > 2*perAddr+50 {
		t.Fatalf("goroutines grew by %d (cap %d connections)", grs, perAddr)
	}
	if n := metricstest.Value(t, reg, "traverse_listener_connections_refused_total"); n < flood-perAddr {
		t.Fatalf("refused %v, want at least %d", n, flood-perAddr)
	}

	// The timeouts close what was held; the joined client stays.
	if !testkit.Eventually(10*time.Second, func() bool { return metricstest.Value(t, reg, "traverse_listener_connections_open") == 1 }) {
		t.Fatalf("still %v connections open after the header and idle timeouts", metricstest.Value(t, reg, "traverse_listener_connections_open"))
	}
	if n := metricstest.Value(t, reg, "traverse_listener_read_timeouts_total"); n < perAddr {
		t.Fatalf("read timeouts %v, want at least %d", n, perAddr)
	}
	c.send(map[string]any{"type": "ping"})
	if m := c.recv(); m.Type != TypePong {
		t.Fatalf("joined client after the timeouts: %+v", m)
	}
}

// TestTotalConnectionCap: connections from many addresses stop at MaxConns.
func TestTotalConnectionCap(t *testing.T) {
	const total = 20
	_, addr, reg := serving(t, func(c *Config) { c.MaxConns = total; c.MaxConnsPerAddr = 5 })
	for i := range 2 * total {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(i/5+1))}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	if !testkit.Eventually(5*time.Second, func() bool {
		return metricstest.Value(t, reg, "traverse_listener_connections_refused_total") == total
	}) {
		t.Fatalf("refused %v, want %d", metricstest.Value(t, reg, "traverse_listener_connections_refused_total"), total)
	}
	if open := metricstest.Value(t, reg, "traverse_listener_connections_open"); open != total {
		t.Fatalf("open %v, want %d", open, total)
	}
}

// TestJoinTimeout: WebSockets that never join are closed at the join
// deadline and counted; one that joined stays.
func TestJoinTimeout(t *testing.T) {
	const idle = 50
	joinTimeout := 500 * time.Millisecond
	_, addr, reg := serving(t, func(c *Config) { c.JoinTimeout = joinTimeout })
	var idlers []*testClient
	for range idle {
		c, err := dialWSFrom(t, "127.0.0.2", addr, nil)
		if err != nil {
			t.Fatal(err)
		}
		idlers = append(idlers, c)
	}
	joined, err := dialWSFrom(t, "127.0.0.3", addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	joined.send(map[string]any{"type": "join", "token": token(t, Claims{Room: "r", Identity: "bob", Subscribe: true})})
	if m := joined.recv(); m.Type != TypeJoined {
		t.Fatalf("join: %+v", m)
	}
	start := time.Now()
	for i, c := range idlers {
		m := c.recv()
		if m.Type != TypeError || !m.Fatal || m.Class != ClassBadRequest || !strings.Contains(m.Message, "no join") {
			t.Fatalf("idle socket %d: %+v", i, m)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _, err := c.conn.Read(ctx)
		cancel()
		if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
			t.Fatalf("idle socket %d not closed: %v", i, err)
		}
	}
	t.Logf("%d idle sockets closed within %v of the first deadline", idle, time.Since(start))
	if n := metricstest.Value(t, reg, "traverse_signal_join_timeouts_total"); n != idle {
		t.Fatalf("join timeouts %v, want %d", n, idle)
	}
	if !testkit.Eventually(5*time.Second, func() bool { return metricstest.Value(t, reg, "traverse_signal_sessions_active") == 1 }) {
		t.Fatalf("%v sessions active, want the joined one", metricstest.Value(t, reg, "traverse_signal_sessions_active"))
	}
	joined.send(map[string]any{"type": "ping"})
	if m := joined.recv(); m.Type != TypePong {
		t.Fatalf("joined client after the deadline: %+v", m)
	}
}

// rawRequest sends a GET for path with the given Host and Origin on a new
// connection to addr and returns the response status.
func rawRequest(t *testing.T, addr, path, host, origin string, upgrade bool) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	req := "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\n"
	if origin != "" {
		req += "Origin: " + origin + "\r\n"
	}
	if upgrade {
		req += "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	}
	if _, err := c.Write([]byte(req + "\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// TestOriginDNSRebinding mounts a DNS-rebinding request: a page at
// evil.example whose name now resolves to the server sends Host and Origin
// that agree. It is refused (403, counted) on /ws and /token; the server's
// own loopback origins pass; with configured origins only those pass.
func TestOriginDNSRebinding(t *testing.T) {
	_, addr, reg := serving(t, nil)
	_, port, _ := net.SplitHostPort(addr)
	evil := "evil.example:" + port
	for _, tc := range []struct {
		name, path, host, origin string
		upgrade                  bool
		want                     int
	}{
		{"ws rebinding", "/ws", evil, "http://" + evil, true, http.StatusForbidden},
		{"ws cross-site", "/ws", addr, "http://" + evil, true, http.StatusForbidden},
		{"ws own address", "/ws", addr, "http://" + addr, true, http.StatusSwitchingProtocols},
		{"ws localhost", "/ws", "localhost:" + port, "http://localhost:" + port, true, http.StatusSwitchingProtocols},
		{"ws other port", "/ws", addr, "http://127.0.0.1:1", true, http.StatusForbidden},
		{"ws no origin (not a browser)", "/ws", addr, "", true, http.StatusSwitchingProtocols},
		{"ws bad origin", "/ws", addr, "null", true, http.StatusForbidden},
		{"token rebinding without origin", "/token?room=r", evil, "", false, http.StatusForbidden},
		{"token rebinding", "/token?room=r", evil, "http://" + evil, false, http.StatusForbidden},
		{"token own", "/token?room=r", addr, "", false, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := rawRequest(t, addr, tc.path, tc.host, tc.origin, tc.upgrade); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
		})
	}
	if n := metricstest.Value(t, reg, "traverse_signal_origin_refused_total"); n != 6 {
		t.Fatalf("origin refusals counted %v, want 6", n)
	}

	_, addr2, _ := serving(t, func(c *Config) { c.AllowedOrigins = []string{"https://app.example.com"} })
	for _, tc := range []struct {
		name, path, host, origin string
		upgrade                  bool
		want                     int
	}{
		{"configured origin", "/ws", "app.example.com", "https://app.example.com", true, http.StatusSwitchingProtocols},
		{"configured origin, explicit port", "/ws", "app.example.com", "https://APP.example.com:443", true, http.StatusSwitchingProtocols},
		{"loopback no longer", "/ws", addr2, "http://" + addr2, true, http.StatusForbidden},
		{"token on configured host", "/token?room=r", "app.example.com:443", "", false, http.StatusOK},
		{"token on another host", "/token?room=r", addr2, "", false, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := rawRequest(t, addr2, tc.path, tc.host, tc.origin, tc.upgrade); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
		})
	}
}

func TestNormalizeOrigin(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"http://127.0.0.1:7880", "http://127.0.0.1:7880"},
		{"HTTPS://App.Example.com:443/", "https://app.example.com"},
		{"http://example.com:80", "http://example.com"},
		{"http://[::1]:7880", "http://[::1]:7880"},
		{"https://example.com:8443", "https://example.com:8443"},
		{"null", ""},
		{"ftp://example.com", ""},
		{"http://example.com/path", ""},
		{"http://user@example.com", ""},
		{"http://", ""},
	} {
		got, err := normalizeOrigin(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("normalizeOrigin(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("normalizeOrigin(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if _, err := New(Config{Key: testKey, Backend: &fakeBackend{}, AllowedOrigins: []string{"example.com"}}); err == nil {
		t.Error("an origin without scheme was accepted in the config")
	}
}

// FuzzNormalizeOrigin: any Origin header either fails or normalizes to a
// fixed point (normalizing the result again changes nothing).
func FuzzNormalizeOrigin(f *testing.F) {
	for _, s := range []string{"http://127.0.0.1:7880", "HTTPS://App.Example.com:443/", "null", "http://[::1]:80",
		"http://evil.example:7880", "http://[fe80::1%25eth0]:1", "https://a:b@c", "http://x/%2e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := normalizeOrigin(s)
		if err != nil {
			return
		}
		n2, err := normalizeOrigin(n)
		if err != nil || n2 != n {
			t.Fatalf("%q -> %q -> %q, %v", s, n, n2, err)
		}
	})
}
