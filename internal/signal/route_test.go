package signal

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeDirectory is a room directory in memory.
type fakeDirectory struct {
	mu    sync.Mutex // guards rooms
	rooms map[string]fakePlace
}

type fakePlace struct {
	node    string
	replace bool
}

func (d *fakeDirectory) RoomNode(_ context.Context, room string) (string, bool, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.rooms[room]
	return p.node, p.replace, ok
}

func routeServer(t *testing.T, nodes []Node, dir RoomDirectory) (*Server, string, func() float64) {
	t.Helper()
	eu, _ := ParseRegionRule("10.1.0.0/16=eu")
	us, _ := ParseRegionRule("10.2.0.0/16=us")
	ap, _ := ParseRegionRule("10.3.0.0/16=ap")
	region, near, err := ParseRegionNear("eu=us,ap")
	if err != nil {
		t.Fatal(err)
	}
	s, be, hs, reg := newTestServer(t, func(c *Config) {
		c.RegionRules = []RegionRule{eu, us, ap}
		c.RegionNear = map[string][]string{region: near, "ap": {"eu"}}
		if dir != nil {
			c.Directory = dir
		}
	})
	be.mu.Lock()
	be.nodes = nodes
	be.mu.Unlock()
	bad := func() float64 { return testutil.ToFloat64(s.rm.requests.WithLabelValues("bad_request")) }
	_ = reg
	return s, hs.URL, bad
}

func getRoute(t *testing.T, base string, q url.Values) (int, RouteAnswer) {
	t.Helper()
	res, err := http.Get(base + "/v1/route?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var a RouteAnswer
	if res.StatusCode == 200 {
		if err := json.NewDecoder(res.Body).Decode(&a); err != nil {
			t.Fatal(err)
		}
	}
	return res.StatusCode, a
}

// TestRouteRules: each rule of node choice through GET /v1/route.
func TestRouteRules(t *testing.T) {
	nodes := []Node{
		{ID: "eu1", Region: "eu", Load: 0.6},
		{ID: "eu2", Region: "eu", Load: 0.3, Public: netip.MustParseAddr("203.0.113.2")},
		{ID: "us1", Region: "us", Load: 0.9},
		{ID: "ap1", Region: "ap", Load: 0.1},
		{ID: "xx1", Region: "xx", Load: 0.0},
	}
	dir := &fakeDirectory{rooms: map[string]fakePlace{
		"onus": {node: "us1"}, "ondead": {node: "eu2", replace: true}, "onfull": {node: "full1"},
	}}
	_, base, bad := routeServer(t, append(nodes, Node{ID: "full1", Region: "us", Load: 1}), dir)
	for _, tc := range []struct {
		name, ip, room, want, region string
	}{
		{"region by CIDR, least loaded in it", "10.1.9.9", "", "eu2", "eu"},
		{"another region's client", "10.2.0.1", "", "us1", "us"},
		{"no rule: least loaded anywhere", "192.0.2.1", "", "xx1", ""},
		{"room in the directory wins over region", "10.1.9.9", "onus", "us1", "eu"},
		{"room's node marked for re-placement: rules", "10.1.9.9", "ondead", "eu1", "eu"},
		{"room's node full: rules", "10.1.9.9", "onfull", "eu2", "eu"},
		{"unknown room: rules", "10.1.9.9", "fresh", "eu2", "eu"},
		{"IPv4-mapped IPv6", "::ffff:10.1.9.9", "", "eu2", "eu"},
	} {
		q := url.Values{"ip": {tc.ip}}
		if tc.room != "" {
			q.Set("room", tc.room)
		}
		code, a := getRoute(t, base, q)
		if code != 200 || a.Node != tc.want || a.ClientRegion != tc.region {
			t.Errorf("%s: %d %+v, want %s (%s)", tc.name, code, a, tc.want, tc.region)
		}
	}
	if _, a := getRoute(t, base, url.Values{"ip": {"10.1.0.1"}}); a.Public != "203.0.113.2" {
		t.Errorf("public address: %+v", a)
	}
	// Without ip: the requester's own address (loopback: no region).
	if code, a := getRoute(t, base, nil); code != 200 || a.Node != "xx1" {
		t.Errorf("own address: %d %+v", code, a)
	}
	for _, q := range []url.Values{{"ip": {""}}, {"ip": {"10.1.1"}}, {"ip": {"fe80::1%eth0"}}, {"ip": {"10.1.0.0/16"}},
		{"ip": {string(make([]byte, 100))}}, {"ip": {"10.1.0.1"}, "room": {"a b"}}} {
		if code, _ := getRoute(t, base, q); code != http.StatusBadRequest {
			t.Errorf("%v: %d, want 400", q, code)
		}
	}
	if n := bad(); n != 6 {
		t.Errorf("bad requests counted %v, want 6", n)
	}
}

// TestRouteNearestRegion: a client whose region has no node with capacity
// goes to the nearest region of its list, in order, then anywhere.
func TestRouteNearestRegion(t *testing.T) {
	for _, tc := range []struct {
		name  string
		nodes []Node
		ip    string
		want  string
	}{
		{"own region full: first near region", []Node{{ID: "eu1", Region: "eu", Load: 1}, {ID: "us1", Region: "us", Load: 0.8}, {ID: "ap1", Region: "ap", Load: 0.1}}, "10.1.0.1", "us1"},
		{"first near has none: second", []Node{{ID: "eu1", Region: "eu", Load: 1}, {ID: "us1", Region: "us", Load: 1}, {ID: "ap1", Region: "ap", Load: 0.7}, {ID: "xx1", Region: "xx"}}, "10.1.0.1", "ap1"},
		{"no near region has one: any", []Node{{ID: "eu1", Region: "eu", Load: 1}, {ID: "xx1", Region: "xx", Load: 0.5}, {ID: "yy1", Region: "yy", Load: 0.2}}, "10.1.0.1", "yy1"},
		{"another region's own order", []Node{{ID: "us1", Region: "us"}, {ID: "eu1", Region: "eu", Load: 0.9}}, "10.3.0.1", "eu1"},
		{"load decides within a region", []Node{{ID: "eu1", Region: "eu", Load: 0.5}, {ID: "eu2", Region: "eu", Load: 0.4}, {ID: "us1", Region: "us"}}, "10.1.0.1", "eu2"},
	} {
		_, base, _ := routeServer(t, tc.nodes, nil)
		code, a := getRoute(t, base, url.Values{"ip": {tc.ip}})
		if code != 200 || a.Node != tc.want {
			t.Errorf("%s: %d %+v, want %s", tc.name, code, a, tc.want)
		}
	}
	_, base, _ := routeServer(t, []Node{{ID: "full", Load: 1}}, nil)
	if code, _ := getRoute(t, base, url.Values{"ip": {"10.1.0.1"}}); code != http.StatusServiceUnavailable {
		t.Errorf("no node: %d", code)
	}
	if _, _, err := ParseRegionNear("eu"); !errors.Is(err, ErrConfig) {
		t.Errorf("bad order: %v", err)
	}
}

// TestJoinPlacesByDirectory: join places a room where the directory says
// (not where this signal server would), and a re-placed room's old node is
// not reused from this server's own memory.
func TestJoinPlacesByDirectory(t *testing.T) {
	dir := &fakeDirectory{rooms: map[string]fakePlace{"r": {node: "n2"}}}
	s, _, _ := routeServer(t, []Node{{ID: "n1", Load: 0.1}, {ID: "n2", Load: 0.5}}, dir)
	n, err := s.place("r", netip.MustParseAddr("192.0.2.1"))
	if err != nil || n.ID != "n2" {
		t.Fatalf("placed on %q %v, want n2", n.ID, err)
	}
	dir.mu.Lock()
	dir.rooms["r"] = fakePlace{node: "n2", replace: true}
	dir.mu.Unlock()
	n, err = s.place("r", netip.MustParseAddr("192.0.2.1"))
	if err != nil || n.ID != "n1" {
		t.Fatalf("re-placed on %q %v, want n1", n.ID, err)
	}
}

func FuzzRouteIP(f *testing.F) {
	for _, s := range []string{"10.1.2.3", "::ffff:10.1.2.3", "2001:db8::1", "fe80::1%eth0", "", "1.2.3", "::"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := parseRouteIP(s)
		if err != nil {
			return
		}
		if !a.IsValid() || a.Zone() != "" || a.Is4In6() || len(s) > maxRouteIP {
			t.Fatalf("accepted %q as %v", s, a)
		}
	})
}
