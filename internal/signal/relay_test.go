package signal

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/bus/bustest"
	"github.com/traverse-rtc/traverse/internal/persource"
	"github.com/traverse-rtc/traverse/internal/relayproto"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

type relayScene struct {
	t     *testing.T
	emb   *bus.Embedded
	rs    *RelayService
	srv   *httptest.Server
	pub   ed25519.PublicKey
	now   atomic.Pointer[time.Time]
	reg   *prometheus.Registry
	key   []byte
	mu    sync.Mutex // guards opens
	opens map[string][]bus.RelayOpen
}

func newRelayScene(t *testing.T) *relayScene {
	t.Helper()
	emb := bustest.Start(t)
	s := &relayScene{t: t, emb: emb, reg: prometheus.NewRegistry(), key: bytes.Repeat([]byte("k"), 32), opens: map[string][]bus.RelayOpen{}}
	now := time.Now()
	s.now.Store(&now)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	s.pub = pub
	var err error
	s.rs, err = NewRelayService(RelayConfig{Bus: s.connect(bus.RoleSignal, ""), TokenKey: s.key, GrantKey: priv,
		Registerer: s.reg, Now: func() time.Time { return *s.now.Load() }, Rate: 1000})
	if err != nil {
		t.Fatal(err)
	}
	s.srv = httptest.NewServer(s.rs)
	t.Cleanup(s.srv.Close)
	return s
}

func (s *relayScene) connect(role bus.Role, node string) *bus.Client {
	return bustest.Connect(s.t, s.emb, role, node)
}

// node connects relay node id and announces a.
func (s *relayScene) node(a bus.RelayAnnounce) {
	s.t.Helper()
	c := s.connect(bus.RoleRelay, a.Node)
	if _, err := c.SubscribeRelayOpen(a.Node, func(o bus.RelayOpen) {
		s.mu.Lock()
		s.opens[o.Node] = append(s.opens[o.Node], o)
		s.mu.Unlock()
	}); err != nil {
		s.t.Fatal(err)
	}
	if err := c.AnnounceRelay(a); err != nil {
		s.t.Fatal(err)
	}
	testkit.WaitFor(s.t, 5*time.Second, "announcement of "+a.Node, func() bool {
		s.rs.mu.Lock()
		defer s.rs.mu.Unlock()
		_, ok := s.rs.nodes[a.Node]
		return ok
	})
}

func (s *relayScene) post(token string, body any) (*http.Response, RelayOffer) {
	s.t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, s.srv.URL, bytes.NewReader(b))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var o RelayOffer
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&o); err != nil {
			s.t.Fatal(err)
		}
	}
	return resp, o
}

func (s *relayScene) token(pub bool) string {
	tok, err := MintToken(s.key, Claims{Room: "calls", Identity: "alice", Publish: pub, Expires: time.Now().Add(time.Hour).Unix()})
	if err != nil {
		s.t.Fatal(err)
	}
	return tok
}

func ann(id, region, mapping, filtering string, nat bool) bus.RelayAnnounce {
	return bus.RelayAnnounce{Node: id, Region: region, Addr: "203.0.113.9:3490", NAT: nat, Mapping: mapping,
		Filtering: filtering, MaxSessions: 8, Time: time.Now()}
}

const (
	eimS  = "endpoint-independent"
	adS   = "address-dependent"
	apdS  = "address-and-port-dependent"
	symTx = `{"nat":true,"mapping":"address-and-port-dependent","filtering":"address-and-port-dependent"}`
)

// The endpoint offers compatible nodes, nearest first, with grants that
// verify for each side at that node only, and tells each offered node the
// peers' addresses.
func TestRelayServiceOffer(t *testing.T) {
	s := newRelayScene(t)
	s.node(ann("apdf-eu", "eu", eimS, apdS, true))  // a symmetric peer cannot reach it
	s.node(ann("sym-eu", "eu", apdS, apdS, true))   // nobody can
	s.node(ann("adf-us", "us", eimS, adS, true))    // far but compatible
	s.node(ann("open-eu", "eu", eimS, eimS, false)) // near and compatible
	full := ann("full-eu", "eu", eimS, eimS, false) // full: not offered
	full.Sessions = 8
	s.node(full)
	var sym RelayNAT
	_ = json.Unmarshal([]byte(symTx), &sym)
	req := RelayRequest{Peer: "bob",
		Self:  RelayPeer{NAT: sym, Region: "eu", Addrs: []string{"198.51.100.1:4000"}},
		Other: RelayPeer{NAT: RelayNAT{NAT: true, Mapping: 1, Filtering: 1}, Region: "eu", Addrs: []string{"198.51.100.2:5000"}}}
	resp, offer := s.post(s.token(true), req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	var ids []string
	for _, n := range offer.Nodes {
		ids = append(ids, n.ID)
	}
	if len(ids) != 2 || ids[0] != "open-eu" || ids[1] != "adf-us" {
		t.Fatalf("offered %v, want [open-eu adf-us]", ids)
	}
	for _, n := range offer.Nodes {
		for side, g64 := range n.Grants {
			g, err := base64.RawURLEncoding.DecodeString(g64)
			if err != nil {
				t.Fatal(err)
			}
			got, err := relayproto.Verify(g, s.pub, n.ID, time.Now())
			if err != nil || int(got.Side) != side {
				t.Errorf("node %s side %d: %+v, %v", n.ID, side, got, err)
			}
			if _, err := relayproto.Verify(g, s.pub, "sym-eu", time.Now()); err == nil {
				t.Error("a grant verifies at another node")
			}
		}
	}
	testkit.WaitFor(t, 5*time.Second, "both offered nodes told the peers' addresses", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.opens["open-eu"]) == 1 && len(s.opens["adf-us"]) == 1 && len(s.opens["adf-us"][0].Peers) == 2
	})
	s.mu.Lock()
	if len(s.opens["apdf-eu"])+len(s.opens["sym-eu"])+len(s.opens["full-eu"]) != 0 {
		t.Error("a node not offered was told of the session")
	}
	s.mu.Unlock()

	// Six seconds later every node is silent: none offered.
	later := time.Now().Add(6 * time.Second)
	s.now.Store(&later)
	if _, offer := s.post(s.token(true), req); len(offer.Nodes) != 0 {
		t.Errorf("silent nodes offered: %+v", offer.Nodes)
	}
}

func TestRelayServiceRefusals(t *testing.T) {
	s := newRelayScene(t)
	s.node(ann("open", "", eimS, eimS, false))
	good := RelayRequest{Peer: "bob"}
	for _, tc := range []struct {
		name   string
		token  string
		body   any
		status int
		result string
	}{
		{"no token", "", good, 401, "token"},
		{"forged token", s.token(true)[:20] + "x" + s.token(true)[21:], good, 401, "token"},
		{"no publish right", s.token(false), good, 401, "token"},
		{"bad peer", s.token(true), RelayRequest{Peer: "bad name!"}, 400, "bad"},
		{"self", s.token(true), RelayRequest{Peer: "alice"}, 400, "bad"},
		{"bad address", s.token(true), RelayRequest{Peer: "bob", Self: RelayPeer{Addrs: []string{"x"}}}, 400, "bad"},
		{"too large", s.token(true), map[string]string{"peer": "bob", "pad": string(bytes.Repeat([]byte("a"), 9000))}, 413, "bad"},
	} {
		before := testutil.ToFloat64(s.rs.m.requests.WithLabelValues(tc.result))
		resp, _ := s.post(tc.token, tc.body)
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.status)
		}
		if got := testutil.ToFloat64(s.rs.m.requests.WithLabelValues(tc.result)); got != before+1 {
			t.Errorf("%s: %s not counted", tc.name, tc.result)
		}
	}
}

func FuzzRelayRequest(f *testing.F) {
	f.Add([]byte(`{"peer":"bob","self":{"nat":` + symTx + `,"region":"eu","addrs":["198.51.100.1:4000"],"rtt_ms":{"n1":12.5}},"other":{}}`))
	f.Add([]byte(`{"peer":"b","self":{"nat":{"mapping":"nope"}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRelayRequest(b)
		if err != nil {
			return
		}
		again, _ := json.Marshal(r)
		if _, err := ParseRelayRequest(again); err != nil {
			t.Fatalf("%q parsed, its encoding %q does not: %v", b, again, err)
		}
	})
}

func TestRelayServiceRateLimit(t *testing.T) {
	s := newRelayScene(t)
	s.rs.rate = persource.NewRate(0.001, 1)
	if resp, _ := s.post(s.token(true), RelayRequest{Peer: "bob"}); resp.StatusCode != http.StatusOK {
		t.Fatalf("first request: %d", resp.StatusCode)
	}
	if resp, _ := s.post(s.token(true), RelayRequest{Peer: "bob"}); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("second request: %d, want 429", resp.StatusCode)
	}
	if got := testutil.ToFloat64(s.rs.m.requests.WithLabelValues("rate_limited")); got != 1 {
		t.Errorf("rate_limited %v, want 1", got)
	}
}
