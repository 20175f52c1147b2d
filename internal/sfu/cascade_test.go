package sfu

import (
	"bytes"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cascade/relay"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/loadgen/loadgentest"
	"github.com/traverse-rtc/traverse/internal/metricstest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// cascadeNode is one SFU node with a cascade relay port, on a shared bus.
type cascadeNode struct {
	s   *Server
	reg *prometheus.Registry
	id  relay.NodeID
}

var testCascadeSecret = bytes.Repeat([]byte("cascade-secret-"), 3)

// cascadeBus starts an embedded bus and connects a signal-role client to
// it (the test's signaler).
func cascadeBus(t testing.TB) (*bus.Embedded, *bus.Client) {
	t.Helper()
	e, err := bus.StartEmbedded(bus.EmbeddedConfig{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	sigID, err := e.NewIdentity(bus.RoleSignal, "")
	if err != nil {
		t.Fatal(err)
	}
	bc, err := bus.Connect(bus.Config{URLs: []string{e.URL()}, Name: "test", RequestTimeout: 20 * time.Second, Identity: sigID}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bc.Close() })
	return e, bc
}

// startCascadeNode starts SFU node name with a relay port on e; mods
// change its Config.
func startCascadeNode(t testing.TB, e *bus.Embedded, name string, mods ...func(*Config)) *cascadeNode {
	t.Helper()
	ident, err := e.NewIdentity(bus.RoleNode, name)
	if err != nil {
		t.Fatal(err)
	}
	nb, err := bus.Connect(bus.Config{URLs: []string{e.URL()}, Name: name, Workers: 16, Identity: ident}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nb.Close() })
	reg := prometheus.NewRegistry()
	cfg := Config{UDP: netip.MustParseAddrPort("127.0.0.1:0"), NodeID: name, Bus: nb, DataPath: suiteDataPath(t),
		CascadeListen: netip.MustParseAddrPort("127.0.0.1:0"), CascadeSecret: testCascadeSecret, Registerer: reg}
	for _, m := range mods {
		m(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, s.Run)
	return &cascadeNode{s: s, reg: reg, id: relay.NodeID(s.CascadeID())}
}

// metric is the node's metric name summed over its series (0 when it has
// none yet).
func (n *cascadeNode) metric(t *testing.T, name string) float64 {
	t.Helper()
	return max(0, metricstest.Value(t, n.reg, name))
}

// TestCascadeRoomSpansNodes: a publisher on node A, subscribers on B and
// C. The test plays the controller: it gives each node its peers and
// routes, tells B and C of the tracks A's events announce, and commands A
// to push them to B and C. A's link to C is dead (its address for C is a
// socket nobody reads), and the routes send C's media through B: C
// receives it by the routes alone, A sends each packet once (to B), and
// C's subscriber's keyframe requests reach A.
func TestCascadeRoomSpansNodes(t *testing.T) {
	e, bc := cascadeBus(t)
	a, b, c := startCascadeNode(t, e, "nodeA"), startCascadeNode(t, e, "nodeB"), startCascadeNode(t, e, "nodeC")
	if a.id == 0 || a.id == b.id || b.id == c.id || a.id == c.id {
		t.Fatalf("relay ids %d %d %d", a.id, b.id, c.id)
	}

	// Announcements carry the relay address and id.
	anns := make(chan bus.NodeAnnounce, 16)
	asub, err := bc.SubscribeNodes(func(an bus.NodeAnnounce) {
		if an.Node == "nodeA" {
			select {
			case anns <- an:
			default:
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case an := <-anns:
		if an.Relay != a.s.Cascade().Addr().String() || an.RelayID != uint32(a.id) {
			t.Fatalf("announcement relay %q id %d, want %s %d", an.Relay, an.RelayID, a.s.Cascade().Addr(), a.id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no announcement from nodeA")
	}
	asub.Unsubscribe()

	dead := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	deadAddr := dead.LocalAddr().(*net.UDPAddr).AddrPort()
	peers := func(n *cascadeNode, m map[relay.NodeID]netip.AddrPort) {
		t.Helper()
		if err := n.s.Cascade().SetPeers(m); err != nil {
			t.Fatal(err)
		}
	}
	peers(a, map[relay.NodeID]netip.AddrPort{b.id: b.s.Cascade().Addr(), c.id: deadAddr})
	peers(b, map[relay.NodeID]netip.AddrPort{a.id: a.s.Cascade().Addr(), c.id: c.s.Cascade().Addr()})
	peers(c, map[relay.NodeID]netip.AddrPort{a.id: deadAddr, b.id: b.s.Cascade().Addr()})
	a.s.Cascade().SetRoutes(1, map[relay.NodeID]relay.NodeID{b.id: b.id, c.id: b.id})
	b.s.Cascade().SetRoutes(1, map[relay.NodeID]relay.NodeID{a.id: a.id, c.id: c.id})
	c.s.Cascade().SetRoutes(1, map[relay.NodeID]relay.NodeID{a.id: b.id, b.id: b.id})

	// The controller's part: a track published on A is added to B and C
	// and A is commanded to push it to both.
	var mu sync.Mutex
	var errs []error
	esub, err := bc.SubscribeRoomEvents("r1", func(ev bus.RoomEvent) {
		if ev.Type != bus.EventTrackPublished || ev.Node != "nodeA" {
			return
		}
		rt := RemoteTrackOf(ev.Room, ev.Session, uint32(a.id), ev.Track)
		mu.Lock()
		defer mu.Unlock()
		for _, n := range []*cascadeNode{b, c} {
			if err := n.s.AddRemoteTrack(rt); err != nil {
				errs = append(errs, err)
			}
		}
		k := relay.StreamKey{Room: ev.Room, Publisher: ev.Session, Track: ev.Track.ID}
		if err := a.s.Cascade().SetNeed(k, []relay.NodeID{b.id, c.id}); err != nil {
			errs = append(errs, err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer esub.Unsubscribe()

	dial := loadgentest.BusDialer(t, bc)
	// B's subscriber is in the room before the publisher (renegotiated
	// when the remote tracks come); C's joins after (offered at join).
	subB := dial("nodeB", loadgen.ClientConfig{Room: "r1", Identity: "sub-b", Subscribe: true})
	dial("nodeA", loadgen.ClientConfig{Room: "r1", Identity: "pub", Publish: true, VideoBitrate: 300_000})
	testkit.WaitFor(t, 10*time.Second, "B to know the remote tracks", func() bool {
		b.s.casc.mu.Lock()
		defer b.s.casc.mu.Unlock()
		return len(b.s.casc.remotes["r1"]) == 2
	})
	subC := dial("nodeC", loadgen.ClientConfig{Room: "r1", Identity: "sub-c", Subscribe: true})
	for name, sub := range map[string]*loadgen.Client{"B": subB, "C": subC} {
		testkit.WaitFor(t, 20*time.Second, "the subscriber on "+name+" receiving A's video and audio", func() bool {
			return sub.Receives(1, 1, 50)
		})
	}
	mu.Lock()
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	mu.Unlock()
	if f := b.metric(t, "traverse_relay_forwarded_total"); f == 0 {
		t.Fatal("B forwarded nothing: C's media did not come through B")
	}
	// A sends each packet once, to B, for both B and C.
	sent, delivered := a.metric(t, "traverse_relay_sent_total"), b.metric(t, "traverse_relay_delivered_total")
	if sent == 0 || sent > delivered*1.05+10 {
		t.Fatalf("A sent %v messages, B delivered %v: media did not cross A's link once", sent, delivered)
	}
	if n := a.metric(t, "traverse_sfu_cascade_feedback_in_total"); n == 0 {
		t.Fatal("no keyframe request from B or C reached A")
	}
	if n := c.metric(t, "traverse_sfu_cascade_feedback_out_total"); n == 0 {
		t.Fatal("C sent no keyframe request to A")
	}

	// The publisher leaves: B drops its remote tracks when told.
	b.s.RemoveRemoteTrack("r1", "x", "y") // unknown: nothing happens
}

// deliverAllocs is the allocations per packet of remote track r1/pub/v
// (video) that DeliverMedia takes, over n packets.
func deliverAllocs(t *testing.T, s *Server, n int) float64 {
	t.Helper()
	pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SequenceNumber: 1, SSRC: 5}, Payload: make([]byte, 1000)}
	raw, err := pkt.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	local := (*cascadeLocal)(s)
	room, pub, track := []byte("r1"), []byte("pub"), []byte("v")
	local.DeliverMedia(room, pub, track, 0, raw) // the layer is made once
	seq := uint16(2)
	return testing.AllocsPerRun(n, func() {
		raw[2], raw[3] = byte(seq>>8), byte(seq)
		seq++
		local.DeliverMedia(room, pub, track, 0, raw)
	})
}

// TestCascadeDeliverAllocs: a relayed packet for a remote track goes to
// the node's subscribers without allocating.
func TestCascadeDeliverAllocs(t *testing.T) {
	e, err := bus.StartEmbedded(bus.EmbeddedConfig{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	n := startCascadeNode(t, e, "nodeA")
	s := n.s
	r := newRoom(s, "r1")
	s.mu.Lock()
	s.rooms["r1"] = r
	s.mu.Unlock()
	if !r.addRemote(&RemoteTrack{Room: "r1", Publisher: "pub", Track: "v", Node: 9, Kind: "video", MimeType: "video/VP8", ClockRate: 90000, Layers: 1}) {
		t.Fatal("remote track not added")
	}
	if allocs := deliverAllocs(t, s, 1000); allocs != 0 {
		t.Fatalf("%v allocations per relayed packet", allocs)
	}
	local := (*cascadeLocal)(s)
	room, pub, track := []byte("r1"), []byte("pub"), []byte("v")
	raw := make([]byte, 1012)
	raw[0] = 0x80
	if got := testutilCounter(s.casc.unknown); got != 0 {
		t.Fatalf("%v packets counted unknown", got)
	}
	local.DeliverMedia([]byte("r1"), []byte("pub"), []byte("nope"), 0, raw)
	local.DeliverMedia([]byte("r2"), []byte("pub"), []byte("v"), 0, raw)
	local.DeliverMedia(room, pub, track, maxLayers, raw)
	if got := testutilCounter(s.casc.unknown); got != 3 {
		t.Fatalf("%v packets counted unknown, want 3", got)
	}
}
