package relay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/metricstest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

var secret = bytes.Repeat([]byte{0x5a}, 32)

// sfu is the test's Local: it counts what it is handed.
type sfu struct {
	media, feedback atomic.Int64
	mu              sync.Mutex
	lastRoom        string
	lastFrom        NodeID
	needs           map[StreamKey]bool
	onMedia         atomic.Pointer[func(rtp []byte)] // set by a test while the node runs
}

func (s *sfu) DeliverMedia(room, publisher, track []byte, layer uint8, rtp []byte) {
	s.media.Add(1)
	if f := s.onMedia.Load(); f != nil {
		(*f)(rtp)
		return
	}
	s.mu.Lock()
	s.lastRoom = string(room) + "/" + string(publisher) + "/" + string(track)
	s.mu.Unlock()
}

func (s *sfu) DeliverFeedback(room, publisher, track []byte, layer uint8, from NodeID, rtcp []byte) {
	s.feedback.Add(1)
	s.mu.Lock()
	s.lastFrom = from
	s.mu.Unlock()
}

func (s *sfu) Need(k StreamKey, needed bool) {
	s.mu.Lock()
	if s.needs == nil {
		s.needs = map[StreamKey]bool{}
	}
	s.needs[k] = needed
	s.mu.Unlock()
}

type node struct {
	id  NodeID
	e   *Endpoint
	sfu *sfu
	reg *prometheus.Registry
}

func (n *node) metric(t testing.TB, name string, labels ...string) float64 {
	return metricstest.Value(t, n.reg, name, labels...)
}

// startNodes runs an endpoint for each id on loopback, every one the
// others' peer.
func startNodes(t testing.TB, ids ...NodeID) map[NodeID]*node {
	return startNodesAt(t, ids, func(NodeID) (netip.AddrPort, func(func() error) error) {
		return netip.MustParseAddrPort("127.0.0.1:0"), func(f func() error) error { return f() }
	})
}

// startNodesAt is startNodes with each node's listening address and the
// place its socket opens in (a lab host's Do) given by at.
func startNodesAt(t testing.TB, ids []NodeID, at func(NodeID) (listen netip.AddrPort, do func(func() error) error)) map[NodeID]*node {
	nodes := map[NodeID]*node{}
	addrs := map[NodeID]netip.AddrPort{}
	for _, id := range ids {
		reg := prometheus.NewRegistry()
		s := &sfu{}
		listen, do := at(id)
		var e *Endpoint
		if err := do(func() error {
			var err error
			e, err = New(Config{Node: id, Listen: listen, Secret: secret, Epoch: 1, Local: s, Registry: reg})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		nodes[id] = &node{id: id, e: e, sfu: s, reg: reg}
		addrs[id] = e.Addr()
		testkit.Run(t, e.Run)
	}
	for _, n := range nodes {
		if err := n.e.SetPeers(addrs); err != nil {
			t.Fatal(err)
		}
	}
	return nodes
}

// streamAB starts nodes A and B routed to each other, A's track key
// needed by B.
func streamAB(t *testing.T) (a, b *node) {
	t.Helper()
	ns := startNodes(t, nA, nB)
	a, b = ns[nA], ns[nB]
	a.e.SetRoutes(1, map[NodeID]NodeID{nB: nB})
	b.e.SetRoutes(1, map[NodeID]NodeID{nA: nA})
	if err := a.e.SetNeed(key, []NodeID{nB}); err != nil {
		t.Fatal(err)
	}
	return a, b
}

const (
	nA NodeID = 1
	nB NodeID = 2
	nC NodeID = 3
)

var key = StreamKey{Room: "standup", Publisher: "alice", Track: "TR_video"}

// TestForwardByRouteAlone: A publishes, B and C need the track; the A-C
// link is unusable (A's address for C is a socket that drops everything),
// so the routes send A -> B -> C. Media crosses A-B once per packet although
// two nodes beyond need it, and feedback from C reaches A back through B.
func TestForwardByRouteAlone(t *testing.T) {
	ns := startNodes(t, nA, nB, nC)
	a, b, c := ns[nA], ns[nB], ns[nC]
	dead := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	testkit.Silent(t, dead, "the dead A-C link")
	if err := a.e.SetPeers(map[NodeID]netip.AddrPort{nB: b.e.Addr(), nC: dead.LocalAddr().(*net.UDPAddr).AddrPort()}); err != nil {
		t.Fatal(err)
	}
	a.e.SetRoutes(1, map[NodeID]NodeID{nB: nB, nC: nB})
	b.e.SetRoutes(1, map[NodeID]NodeID{nA: nA, nC: nC})
	c.e.SetRoutes(1, map[NodeID]NodeID{nA: nB, nB: nB})

	if err := a.e.SetNeed(key, []NodeID{nB, nC}); err != nil {
		t.Fatal(err)
	}
	a.sfu.mu.Lock()
	needed := a.sfu.needs[key]
	a.sfu.mu.Unlock()
	if !needed {
		t.Fatal("Local.Need not told")
	}
	const count = 200
	rtp := make([]byte, 1000)
	for i := 0; i < count; i++ {
		if !a.e.Send(key, 0, rtp) {
			t.Fatal("Send: not needed")
		}
	}
	testkit.WaitFor(t, 5*time.Second, "media at B and C", func() bool {
		return b.sfu.media.Load() >= count && c.sfu.media.Load() >= count
	})
	if got := a.metric(t, "traverse_relay_sent_total"); got != count {
		t.Fatalf("A sent %v messages for %d packets to two nodes behind one link, want %d (once per link)", got, count, count)
	}
	if got := b.metric(t, "traverse_relay_forwarded_total"); got != count {
		t.Fatalf("B forwarded %v, want %d", got, count)
	}
	c.sfu.mu.Lock()
	if c.sfu.lastRoom != "standup/alice/TR_video" {
		t.Fatalf("C got %q", c.sfu.lastRoom)
	}
	c.sfu.mu.Unlock()
	if err := c.e.SendFeedback(key, 0, nA, []byte{0x81, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "feedback at A", func() bool { return a.sfu.feedback.Load() == 1 })
	a.sfu.mu.Lock()
	if a.sfu.lastFrom != nC {
		t.Fatalf("feedback from %d, want C", a.sfu.lastFrom)
	}
	a.sfu.mu.Unlock()
	if d := b.sfu.feedback.Load(); d != 0 {
		t.Fatalf("B delivered feedback addressed to A: %d", d)
	}
	// key rotation, one node after the other: media flows throughout
	for _, n := range []*node{c, a, b} {
		if err := n.e.SetEpoch(2); err != nil {
			t.Fatal(err)
		}
	}
	a.e.Send(key, 0, rtp)
	testkit.WaitFor(t, 5*time.Second, "media under epoch 2", func() bool { return c.sfu.media.Load() >= count+1 })
	if d := b.metric(t, "traverse_relay_dropped_total", "reason", "epoch") + c.metric(t, "traverse_relay_dropped_total", "reason", "auth"); d != 0 {
		t.Fatalf("%v frames dropped across the rotation", d)
	}
	if err := a.e.SetNeed(key, nil); err != nil {
		t.Fatal(err)
	}
	if a.e.Send(key, 0, rtp) {
		t.Fatal("Send after the need ended")
	}
}

// attacker is a peer the test drives by hand: node 9, with its own socket.
type attacker struct {
	conn *net.UDPConn
	link *relaywire.Link
	seq  uint32
}

func (x *attacker) frame(t *testing.T, h *relaywire.Header, payload []byte) []byte {
	x.seq++
	if h.Seq == 0 { // each frame a new message, unless the test numbers them
		hh := *h
		hh.Seq = x.seq
		h = &hh
	}
	msg, err := relaywire.AppendHeader(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	return x.link.Seal(nil, relaywire.TypeData, relaywire.AppendData(nil, x.seq, append(msg, payload...)))
}

// TestDropsAndCounts mounts each attack on node B and checks it is dropped
// and counted under its reason, while a good frame still gets through.
func TestDropsAndCounts(t *testing.T) {
	ns := startNodes(t, nB, nC)
	b, c := ns[nB], ns[nC]
	const x NodeID = 9
	xc := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	xaddr := xc.LocalAddr().(*net.UDPAddr).AddrPort()
	xl, _ := relaywire.NewLink(secret, x, nB, 1)
	att := &attacker{conn: xc, link: xl}
	for _, n := range ns {
		if err := n.e.SetPeers(map[NodeID]netip.AddrPort{nB: b.e.Addr(), nC: c.e.Addr(), x: xaddr}); err != nil {
			t.Fatal(err)
		}
	}
	// node 4 does not exist: B and C each route it to the other, a loop
	const ghost NodeID = 4
	b.e.SetRoutes(1, map[NodeID]NodeID{nC: nC, x: x, ghost: nC})
	c.e.SetRoutes(1, map[NodeID]NodeID{nB: nB, x: nB, ghost: nB})

	hdr := func(dst ...NodeID) *relaywire.Header {
		h := &relaywire.Header{Kind: relaywire.KindMedia, HopLimit: 8, Source: x, Room: []byte("r"), Publisher: []byte("p"), Track: []byte("t")}
		h.NDst = uint8(copy(h.Dst[:], dst))
		return h
	}
	send := func(from *net.UDPConn, f []byte) {
		if _, err := from.WriteToUDPAddrPort(f, b.e.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	drops := func(reason string) float64 {
		return b.metric(t, "traverse_relay_dropped_total", "reason", reason) + c.metric(t, "traverse_relay_dropped_total", "reason", reason)
	}
	wantDrop := func(reason string, n float64) {
		t.Helper()
		testkit.WaitFor(t, 5*time.Second, "drop "+reason, func() bool { return drops(reason) >= n })
	}

	good := att.frame(t, hdr(nB), []byte("media"))
	send(xc, append([]byte(nil), good...))
	testkit.WaitFor(t, 5*time.Second, "the good frame", func() bool { return b.sfu.media.Load() == 1 })

	send(xc, good) // replayed
	wantDrop("replay", 1)

	forged := att.frame(t, hdr(nB), []byte("media"))
	forged[len(forged)-20] ^= 1
	send(xc, forged)
	wantDrop("auth", 1)

	// a frame of link 9 -> C sent to B (misrouted at the link level)
	xcl, _ := relaywire.NewLink(secret, x, nC, 1)
	msg, _ := relaywire.AppendHeader(nil, hdr(nC))
	send(xc, xcl.Seal(nil, relaywire.TypeData, relaywire.AppendData(nil, 1, msg)))
	wantDrop("auth", 2)

	// another cluster's secret
	other, _ := relaywire.NewLink(bytes.Repeat([]byte{1}, 32), x, nB, 1)
	send(xc, other.Seal(nil, relaywire.TypeData, relaywire.AppendData(nil, 1, msg)))
	wantDrop("auth", 3)

	// node 9's valid frame from another address
	spoof := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	send(spoof, att.frame(t, hdr(nB), nil))
	wantDrop("address", 1)

	// an unknown node
	ul, _ := relaywire.NewLink(secret, 77, nB, 1)
	send(xc, ul.Seal(nil, relaywire.TypeProbe, relaywire.AppendProbe(nil, relaywire.Probe{ID: 1})))
	wantDrop("unknown_peer", 1)

	// not a relay frame at all
	send(xc, []byte{0x80, 0x60, 0, 1})
	wantDrop("short", 1)

	// a version-1 frame (node 9's, valid but for the version nibble; a
	// genuine v1 frame, AES-256 sealed, is relaywire's TestVersion1Refused)
	v1 := att.frame(t, hdr(nB), []byte("media"))
	v1[1] = 1<<4 | byte(relaywire.TypeData)
	send(xc, v1)
	wantDrop("version", 1)
	if got := drops("short"); got != 1 {
		t.Fatalf("short drops %v after the v1 frame, want 1", got)
	}

	// a destination nobody routes (misrouted message)
	send(xc, att.frame(t, hdr(55), []byte("x")))
	wantDrop("no_route", 1)

	// a message claiming to come from B itself
	h := hdr(nC)
	h.Source = nB
	send(xc, att.frame(t, h, []byte("x")))
	wantDrop("loop", 1)

	// a well-formed frame whose relay header is not
	att.seq++
	send(xc, att.link.Seal(nil, relaywire.TypeData, relaywire.AppendData(nil, att.seq, []byte{1, 0, 0, 1})))
	wantDrop("malformed", 1)

	// the routing loop for node 4: the hop limit ends it after 7 hops
	fwdBefore := b.metric(t, "traverse_relay_forwarded_total") + c.metric(t, "traverse_relay_forwarded_total")
	send(xc, att.frame(t, hdr(ghost), []byte("loop")))
	wantDrop("hop_limit", 1)
	fwd := b.metric(t, "traverse_relay_forwarded_total") + c.metric(t, "traverse_relay_forwarded_total") - fwdBefore
	if fwd != 7 {
		t.Fatalf("the loop forwarded %v times, want 7 (hop limit 8)", fwd)
	}
	if got := b.sfu.media.Load(); got != 1 {
		t.Fatalf("B delivered %d messages, want only the good one", got)
	}
	if got := drops("hop_limit"); got != 1 {
		t.Fatalf("hop limit drops %v", got)
	}

	// NACK amplification: B sends node 9 one message (addressed to 9, so
	// B routes it back), then 9 NACKs it ten times; B sends it again at
	// most max-retransmits (5) times and counts the rest.
	sentBefore := b.metric(t, "traverse_relay_forwarded_total")
	send(xc, att.frame(t, hdr(x), []byte("back to 9")))
	testkit.WaitFor(t, 5*time.Second, "B's message to 9", func() bool {
		return b.metric(t, "traverse_relay_forwarded_total") == sentBefore+1
	})
	nb, _ := relaywire.AppendNack(nil, []uint32{1})
	for i := 0; i < 10; i++ {
		send(xc, att.link.Seal(nil, relaywire.TypeNack, nb))
	}
	testkit.WaitFor(t, 5*time.Second, "refused NACKs counted", func() bool {
		return b.metric(t, "traverse_relay_nack_refused_total") == 5
	})
	if got := b.metric(t, "traverse_relay_retransmits_total"); got != 5 {
		t.Fatalf("B sent one message again %v times for 10 NACKs, want 5", got)
	}
}

// TestManyDestinations: a track needed by 20 nodes, all behind B, leaves
// A as two messages (16 + 4 destinations); more than MaxNeed is refused.
func TestManyDestinations(t *testing.T) {
	ns := startNodes(t, nA, nB)
	a, b := ns[nA], ns[nB]
	routes := map[NodeID]NodeID{nB: nB}
	var dsts []NodeID
	for i := NodeID(100); i < 120; i++ {
		routes[i] = nB
		dsts = append(dsts, i, i) // duplicates are ignored
	}
	a.e.SetRoutes(1, routes)
	if err := a.e.SetNeed(key, dsts); err != nil {
		t.Fatal(err)
	}
	a.e.Send(key, 0, []byte("rtp"))
	testkit.WaitFor(t, 5*time.Second, "B drops the 20 destinations it has no route to", func() bool {
		return b.metric(t, "traverse_relay_dropped_total", "reason", "no_route") == 20
	})
	if got := a.metric(t, "traverse_relay_sent_total"); got != 2 {
		t.Fatalf("A sent %v messages, want 2", got)
	}
	many := make([]NodeID, MaxNeed+1)
	for i := range many {
		many[i] = NodeID(1000 + i)
	}
	if err := a.e.SetNeed(key, many); !errors.Is(err, ErrTooMany) {
		t.Fatalf("SetNeed of %d nodes: %v", len(many), err)
	}
}

func TestConfigErrors(t *testing.T) {
	lo := netip.MustParseAddrPort("127.0.0.1:0")
	for name, c := range map[string]Config{
		"no node":      {Listen: lo, Secret: secret, Local: &sfu{}},
		"no address":   {Node: 1, Secret: secret, Local: &sfu{}},
		"no local":     {Node: 1, Listen: lo, Secret: secret},
		"short secret": {Node: 1, Listen: lo, Secret: secret[:31], Local: &sfu{}},
	} {
		if e, err := New(c); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v", name, err)
			if e != nil {
				e.Close()
			}
		}
	}
}

// sendInTime sends count numbered packets of size bytes, each stamped
// with its sending time, from `from` on key at perSecond packets a second
// (in bursts of one per millisecond's share, at least one) and returns how
// many `to` delivered within 100 ms of their sending.
func sendInTime(from, to *node, count, size, perSecond int) int64 {
	var inTime atomic.Int64
	seen := make([]bool, count)
	var mu sync.Mutex
	onMedia := func(rtp []byte) {
		i := binary.BigEndian.Uint32(rtp[8:])
		at := time.Unix(0, int64(binary.BigEndian.Uint64(rtp)))
		mu.Lock()
		if int(i) < count && !seen[i] && time.Since(at) <= 100*time.Millisecond {
			seen[i] = true
			inTime.Add(1)
		}
		mu.Unlock()
	}
	to.sfu.onMedia.Store(&onMedia)
	rtp := make([]byte, size)
	burst := max(1, perSecond/1000)
	tick := time.NewTicker(time.Second * time.Duration(burst) / time.Duration(perSecond))
	defer tick.Stop()
	for i := 0; i < count; {
		<-tick.C
		for j := 0; j < burst && i < count; j, i = j+1, i+1 {
			binary.BigEndian.PutUint64(rtp, uint64(time.Now().UnixNano()))
			binary.BigEndian.PutUint32(rtp[8:], uint32(i))
			from.e.Send(key, 0, rtp)
		}
	}
	testkit.Eventually(300*time.Millisecond, func() bool { return inTime.Load() >= int64(count) })
	return inTime.Load()
}

// TestLossyLinkThroughEndpoints: the relay port's own recovery over a
// link that loses 10 % of A's frames (A's socket to B is a user-space
// lossy proxy): B delivers >= 99.5 % of the packets within 100 ms.
func TestLossyLinkThroughEndpoints(t *testing.T) {
	ns := startNodes(t, nA, nB)
	a, b := ns[nA], ns[nB]
	// A sends to the proxy's front; B sees A at the proxy's back.
	front, source := lossyProxy(t, b.e.Addr(), 0.10)
	if err := a.e.SetPeers(map[NodeID]netip.AddrPort{nB: front}); err != nil {
		t.Fatal(err)
	}
	if err := b.e.SetPeers(map[NodeID]netip.AddrPort{nA: source}); err != nil {
		t.Fatal(err)
	}
	a.e.SetRoutes(1, map[NodeID]NodeID{nB: nB})
	b.e.SetRoutes(1, map[NodeID]NodeID{nA: nA})
	if err := a.e.SetNeed(key, []NodeID{nB}); err != nil {
		t.Fatal(err)
	}
	const count = 3000
	got := sendInTime(a, b, count, 400, 3000)
	sent := a.metric(t, "traverse_relay_sent_total")
	parity := a.metric(t, "traverse_relay_fec_parity_total")
	t.Logf("in time %d/%d (%.2f %%); FEC parity frames %v (%.1f %% of data frames); retransmits %v; rebuilt by FEC at B %v",
		got, count, 100*float64(got)/count, parity, 100*parity/sent, a.metric(t, "traverse_relay_retransmits_total"),
		b.metric(t, "traverse_relay_fec_recovered_total"))
	if float64(got) < 0.995*count {
		t.Fatalf("%.2f %% in time, want >= 99.5 %%", 100*float64(got)/count)
	}
}
