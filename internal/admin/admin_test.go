package admin

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/logging"
	"github.com/traverse-rtc/traverse/internal/metricstest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	s := New(logging.Discard())
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_test_total", Help: "test"})
	s.Registry.MustRegister(c)
	c.Add(3)
	ready := errors.New("warming up")
	s.AddCheck("role", func() error { return ready })
	base := "http://" + start(t, s)

	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "role: warming up") {
		t.Errorf("/readyz before ready = %d %q", code, body)
	}
	ready = nil
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz when ready = %d", code)
	}
	if _, body := get(t, base+"/metrics"); !strings.Contains(body, "traverse_test_total 3") {
		t.Errorf("/metrics lacks the counter:\n%s", body)
	}
}

func TestProfilingOffByDefault(t *testing.T) {
	s := New(logging.Discard())
	rec := func() int {
		w := httptest.NewRecorder()
		s.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/debug/pprof/", nil))
		return w.Code
	}
	if code := rec(); code != 404 {
		t.Errorf("/debug/pprof/ without EnableProfiling: %d, want 404", code)
	}
	s.EnableProfiling()
	if code := rec(); code != 200 {
		t.Errorf("/debug/pprof/ after EnableProfiling: %d, want 200", code)
	}
}

func start(t *testing.T, s *Server) string {
	t.Helper()
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, s.Run)
	return s.Addr().String()
}

// TestConnectionFlood: a thousand idle connections from one address hold at
// most the per-address cap of the admin listener; /healthz from another
// address answers meanwhile.
func TestConnectionFlood(t *testing.T) {
	s := New(logging.Discard())
	addr := start(t, s)
	const flood = 1000
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; i < flood && time.Now().Before(deadline); i++ {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		defer c.Close()
	}
	probe := http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}).DialContext}}
	resp, err := probe.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("/healthz during the flood: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/healthz during the flood: %d", resp.StatusCode)
	}
	if open := metricstest.Value(t, s.Registry, "traverse_listener_connections_open"); open > DefaultMaxConnsPerAddr+1 {
		t.Fatalf("%v connections open, per-address cap %d", open, DefaultMaxConnsPerAddr)
	}
	if n := metricstest.Value(t, s.Registry, "traverse_listener_connections_refused_total"); n < flood-DefaultMaxConnsPerAddr {
		t.Fatalf("refused %v, want at least %d", n, flood-DefaultMaxConnsPerAddr)
	}
}

// TestMadeUpMethod: requests with made-up methods leave no label of theirs
// in any metric of the process.
func TestMadeUpMethod(t *testing.T) {
	s := New(logging.Discard())
	addr := start(t, s)
	for _, path := range []string{"/metrics", "/healthz", "/readyz", "/nothing"} {
		req, err := http.NewRequest("BREW-COFFEE", "http://"+addr+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
	}
	mfs, err := s.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.Contains(strings.ToUpper(l.GetValue()), "BREW") {
					t.Errorf("%s has label %s=%q", mf.GetName(), l.GetName(), l.GetValue())
				}
			}
		}
	}
}
