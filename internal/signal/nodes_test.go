package signal

import (
	"errors"
	"net/http"
	"net/netip"
	"testing"
)

func TestChoose(t *testing.T) {
	rule, err := ParseRegionRule("10.1.0.0/16=eu")
	if err != nil {
		t.Fatal(err)
	}
	p := newPlacer([]RegionRule{rule, {Prefix: netip.MustParsePrefix("10.0.0.0/8"), Region: "us"}}, "us", nil)
	nodes := []Node{
		{ID: "eu1", Region: "eu", Load: 0.5},
		{ID: "eu2", Region: "eu", Load: 0.2},
		{ID: "us1", Region: "us", Load: 0.9},
		{ID: "us2", Region: "us", Load: 1.0},
		{ID: "us3", Region: "us", Load: 0.1, Rooms: []string{"busy"}},
	}
	eu, us := netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("10.9.9.9")
	for _, tc := range []struct {
		name, room, roomNode string
		client               netip.Addr
		nodes                []Node
		want                 string
	}{
		{"eu client: least loaded eu node", "a", "", eu, nodes, "eu2"},
		{"us client: us3 beats busier us1", "a", "", us, nodes, "us3"},
		{"room already placed here", "a", "eu1", us, nodes, "eu1"},
		{"room announced by a node", "busy", "", eu, nodes, "us3"},
		{"placed node is full: choose again", "a", "us2", eu, nodes, "eu2"},
		{"other region when own is far busier", "a", "", eu, []Node{{ID: "eu1", Region: "eu", Load: 0.99}, {ID: "us1", Region: "us"}}, "eu1"},
		{"tie by id", "a", "", eu, []Node{{ID: "b"}, {ID: "a"}}, "a"},
	} {
		n, err := p.choose(tc.nodes, tc.room, tc.roomNode, tc.client)
		if err != nil || n.ID != tc.want {
			t.Errorf("%s: got %q, %v; want %q", tc.name, n.ID, err, tc.want)
		}
	}
	if _, err := p.choose([]Node{{ID: "full", Load: 1}}, "a", "", eu); !errors.Is(err, ErrNoNode) {
		t.Errorf("all full: %v", err)
	}
	if _, err := ParseRegionRule("nonsense"); !errors.Is(err, ErrConfig) {
		t.Errorf("bad rule: %v", err)
	}
}

func TestClientIP(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8")}
	for _, tc := range []struct {
		remote string
		xff    []string
		want   string
	}{
		{"192.0.2.1:5000", []string{"198.51.100.1"}, "192.0.2.1"},             // untrusted peer: XFF ignored
		{"127.0.0.1:5000", []string{"6.6.6.6, 198.51.100.1"}, "198.51.100.1"}, // right-most untrusted
		{"127.0.0.1:5000", []string{"198.51.100.1", "10.0.0.2"}, "198.51.100.1"},
		{"127.0.0.1:5000", nil, "127.0.0.1"},
		{"127.0.0.1:5000", []string{"junk"}, "127.0.0.1"},
		{"[::ffff:192.0.2.1]:5000", nil, "192.0.2.1"},
	} {
		r := &http.Request{RemoteAddr: tc.remote, Header: http.Header{"X-Forwarded-For": tc.xff}}
		if got := clientIP(r, trusted); got.String() != tc.want {
			t.Errorf("%s %v: got %s, want %s", tc.remote, tc.xff, got, tc.want)
		}
	}
}
