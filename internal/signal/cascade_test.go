package signal

import (
	"net/netip"
	"testing"
)

// With the cascade on, a newcomer goes to its nearest, least loaded
// cascade node even when the room lives on another; the room's node keeps
// it while it is about as good (cascadeRoomBonus); a node without a
// cascade holds its rooms as before; with the cascade off nothing changes.
func TestChooseCascade(t *testing.T) {
	rule, err := ParseRegionRule("10.1.0.0/16=eu")
	if err != nil {
		t.Fatal(err)
	}
	us := nearRegions(t)
	p := newPlacer([]RegionRule{rule, {Prefix: netip.MustParsePrefix("10.2.0.0/16"), Region: "us"}}, "", us)
	p.cascade = true
	eu, usc := netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("10.2.9.9")
	nodes := []Node{
		{ID: "eu1", Region: "eu", Load: 0.5, Rooms: []string{"r"}, Cascade: true},
		{ID: "eu2", Region: "eu", Load: 0.1, Cascade: true},
		{ID: "us1", Region: "us", Load: 0.3, Cascade: true},
		{ID: "old", Region: "us", Load: 0.6, Rooms: []string{"legacy"}},
	}
	for _, tc := range []struct {
		name, room, roomNode string
		client               netip.Addr
		want                 string
	}{
		{"us client of an eu room joins its own region's node", "r", "", usc, "us1"},
		{"eu client: the less loaded eu node (by more than the bonus)", "r", "", eu, "eu2"},
		{"the directory's node gets the bonus too", "x", "eu1", eu, "eu2"},
		{"a node without a cascade keeps its room", "legacy", "", eu, "old"},
	} {
		n, err := p.choose(nodes, tc.room, tc.roomNode, tc.client)
		if err != nil || n.ID != tc.want {
			t.Errorf("%s: got %q, %v; want %q", tc.name, n.ID, err, tc.want)
		}
	}
	// Near loads: the room's node keeps the newcomer.
	close := []Node{{ID: "a", Load: 0.3, Rooms: []string{"r"}, Cascade: true}, {ID: "b", Load: 0.2, Cascade: true}}
	if n, _ := p.choose(close, "r", "", eu); n.ID != "a" {
		t.Errorf("near loads: got %s, want the room's node a", n.ID)
	}
	p.cascade = false
	if n, _ := p.choose(nodes, "r", "", usc); n.ID != "eu1" {
		t.Errorf("cascade off: got %s, want the room's node eu1", n.ID)
	}
}

func nearRegions(t *testing.T) map[string][]string {
	t.Helper()
	r, list, err := ParseRegionNear("us=eu")
	if err != nil {
		t.Fatal(err)
	}
	r2, list2, err := ParseRegionNear("eu=us")
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]string{r: list, r2: list2}
}
