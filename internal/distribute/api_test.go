package distribute

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/metricstest"
)

func apiServer(t *testing.T, cfg APIConfig, mod func(*Config)) (*httptest.Server, *Server, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	c := Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Registerer: reg}
	if mod != nil {
		mod(&c)
	}
	s, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	a, err := NewAPI(s, cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(a)
	t.Cleanup(hs.Close)
	return hs, s, reg
}

func call(t *testing.T, hs *httptest.Server, token, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, hs.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hs.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// TestHTTPAPI drives the table over HTTP, and mounts the attacks the API
// must refuse: no or a wrong token, a receiver on the operator's network
// or the server's own port, malformed and oversized bodies, past the
// limits.
func TestHTTPAPI(t *testing.T) {
	const tok = "s3cret"
	hs, s, reg := apiServer(t, APIConfig{Token: tok, Rate: -1}, func(c *Config) { c.MaxReceivers = 2 })
	dst := s.Addrs()[0].String()
	add := `{"op":"add_stream","dst":"` + dst + `","ssrc":7,"receivers":["192.0.2.1:6000"]}`
	for _, tc := range []struct {
		name, token, method, path, body string
		want                            int
	}{
		{"no token", "", "POST", "/v1/distribute", add, 401},
		{"wrong token", "s3cre", "POST", "/v1/distribute", add, 401},
		{"add", tok, "POST", "/v1/distribute", add, 204},
		{"add again", tok, "POST", "/v1/distribute", add, 409},
		{"receiver on a private network", tok, "POST", "/v1/distribute", `{"op":"add_receivers","dst":"` + dst + `","ssrc":7,"receivers":["10.0.0.1:6000"]}`, 403},
		{"receiver on the metadata address", tok, "POST", "/v1/distribute", `{"op":"add_receivers","dst":"` + dst + `","ssrc":7,"receivers":["169.254.169.254:80"]}`, 403},
		{"second receiver", tok, "POST", "/v1/distribute", `{"op":"add_receivers","dst":"` + dst + `","ssrc":7,"receivers":["192.0.2.2:6000"]}`, 204},
		{"past max receivers", tok, "POST", "/v1/distribute", `{"op":"add_receivers","dst":"` + dst + `","ssrc":7,"receivers":["192.0.2.3:6000"]}`, 503},
		{"unknown stream", tok, "POST", "/v1/distribute", `{"op":"remove_stream","dst":"` + dst + `","ssrc":8}`, 404},
		{"not our port", tok, "POST", "/v1/distribute", `{"op":"add_stream","dst":"127.0.0.1:1"}`, 400},
		{"malformed", tok, "POST", "/v1/distribute", `{"op":"add_stream","dst":`, 400},
		{"unknown op", tok, "POST", "/v1/distribute", `{"op":"flush","dst":"` + dst + `"}`, 400},
		{"oversized", tok, "POST", "/v1/distribute", `{"op":"list","x":"` + strings.Repeat("a", maxBody) + `"}`, 400},
		{"unknown path", tok, "GET", "/v1/nothing", "", 404},
		{"path", tok, "GET", "/v1/path", "", 200},
	} {
		if code, body := call(t, hs, tc.token, tc.method, tc.path, tc.body); code != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, code, body, tc.want)
		}
	}
	code, body := call(t, hs, tok, "GET", "/v1/streams", "")
	var got []StreamInfo
	if err := json.Unmarshal([]byte(body), &got); code != 200 || err != nil || len(got) != 1 || len(got[0].Receivers) != 2 || got[0].SSRC == nil || *got[0].SSRC != 7 {
		t.Fatalf("streams: %d %s (%v)", code, body, err)
	}
	if code, _ := call(t, hs, tok, "POST", "/v1/distribute", `{"op":"remove_receivers","dst":"`+dst+`","ssrc":7,"receivers":["192.0.2.1:6000"]}`); code != 204 {
		t.Errorf("remove receiver: %d", code)
	}
	if code, _ := call(t, hs, tok, "POST", "/v1/distribute", `{"op":"remove_stream","dst":"`+dst+`","ssrc":7}`); code != 204 {
		t.Errorf("remove stream: %d", code)
	}
	if n, _ := s.Table().Counts(); n != 0 {
		t.Errorf("%d streams left", n)
	}
	for result, want := range map[string]float64{"unauthorized": 4, "bad_request": 4, "ok": 6, "conflict": 1, "unavailable": 1, "not_found": 2} {
		if v := metricstest.Value(t, reg, "traverse_distribute_api_requests_total", "via", "http", "result", result); v != want {
			t.Errorf("api_requests{result=%s} = %v, want %v", result, v, want)
		}
	}
	if v := metricstest.Value(t, reg, "traverse_distribute_path_info", "path", PathUserspace); v != 1 {
		t.Errorf("path_info = %v", v)
	}
}

// TestHTTPAPIRate: a source past its rate is refused and counted, even
// with a wrong token (so the limit also slows token guessing).
func TestHTTPAPIRate(t *testing.T) {
	hs, _, reg := apiServer(t, APIConfig{Token: "t", Rate: 1, Burst: 3}, nil)
	codes := map[int]int{}
	for range 10 {
		code, _ := call(t, hs, "guess", "GET", "/v1/streams", "")
		codes[code]++
	}
	if codes[401] != 3 || codes[429] != 7 {
		t.Errorf("codes %v, want 3 x 401 then 7 x 429", codes)
	}
	if v := metricstest.Value(t, reg, "traverse_distribute_api_requests_total", "via", "http", "result", "rate_limited"); v != 7 {
		t.Errorf("rate_limited = %v", v)
	}
}

// TestHTTPAPINoToken: without a configured token nothing is authorised.
func TestHTTPAPINoToken(t *testing.T) {
	hs, _, _ := apiServer(t, APIConfig{Rate: -1}, nil)
	if code, _ := call(t, hs, "", "GET", "/v1/streams", ""); code != 401 {
		t.Errorf("no token configured, none sent: %d", code)
	}
	if code, _ := call(t, hs, " ", "GET", "/v1/streams", ""); code != 401 {
		t.Errorf("no token configured, blank sent: %d", code)
	}
}
