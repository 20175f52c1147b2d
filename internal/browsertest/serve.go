package browsertest

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// ServePage serves html on a loopback HTTP server until the test ends and
// returns its URL, for a test page the browser opens.
func ServePage(t testing.TB, html string) string {
	t.Helper()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte(html))
	}))
	t.Cleanup(hs.Close)
	return hs.URL
}
