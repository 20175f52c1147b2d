package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/logging"
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
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	base := "http://" + s.Addr().String()

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
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("admin did not shut down")
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
