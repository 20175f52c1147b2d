package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cluster"
	"github.com/traverse-rtc/traverse/internal/cluster/clustertest"
	"github.com/traverse-rtc/traverse/internal/controller"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/signal/signaltest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

var sdp = signaltest.AudioSDP

// busNode is an SFU node as the bus sees it: it announces itself with its
// load, answers joins and publishes the room events a real node does.
type busNode struct {
	id    string
	bc    *bus.Client
	peers atomic.Int64
	joins atomic.Int64
	stop  chan struct{}
	done  chan struct{}
}

func startBusNode(t *testing.T, c *clustertest.Cluster, id, region string) *busNode {
	t.Helper()
	n := &busNode{id: id, bc: c.Connect(id, bus.RoleNode, id), stop: make(chan struct{}), done: make(chan struct{})}
	if _, err := n.bc.HandleRequests(id, func(_ context.Context, r bus.Request) (bus.Reply, error) {
		switch r.Type {
		case bus.RequestJoin:
			n.peers.Add(1)
			n.joins.Add(1)
			_ = n.bc.PublishRoomEvent(bus.RoomEvent{Type: bus.EventParticipantJoined, Room: r.Join.Room, Node: id,
				Session: r.Session, Identity: r.Join.Identity, Time: time.Now()})
			return bus.Reply{SDP: sdp("nodeufrag")}, nil
		case bus.RequestLeave:
			n.peers.Add(-1)
		}
		return bus.Reply{}, nil
	}); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(n.done)
		tk := time.NewTicker(200 * time.Millisecond)
		defer tk.Stop()
		for {
			_ = n.bc.AnnounceNode(bus.NodeAnnounce{Node: id, Region: region, UDP: "127.0.0.1:7882",
				Load: bus.NodeLoad{Peers: int(n.peers.Load())}, Time: time.Now()})
			select {
			case <-n.stop:
				return
			case <-tk.C:
			}
		}
	}()
	t.Cleanup(func() { close(n.stop); <-n.done })
	return n
}

var testKey = []byte("0123456789abcdef0123456789abcdef")

// startSignal runs a signal server on the cluster with the room directory
// and the region table; clients' addresses come in X-Forwarded-For.
func startSignal(t *testing.T, c *clustertest.Cluster, name string) string {
	t.Helper()
	bc := c.Connect(name, bus.RoleSignal, "")
	be, err := signal.NewBusBackend(bc, 100)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	eu, _ := signal.ParseRegionRule("10.1.0.0/16=eu")
	us, _ := signal.ParseRegionRule("10.2.0.0/16=us")
	s, err := signal.New(signal.Config{Key: testKey, Backend: be, Registerer: prometheus.NewRegistry(), Log: quiet,
		RegionRules: []signal.RegionRule{eu, us}, RegionNear: map[string][]string{"eu": {"us"}, "us": {"eu"}},
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Directory:      cluster.NewDirectory(bc.Conn())})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(func() { hs.Close(); s.Close() })
	return hs.URL
}

// join joins room through the signal server at base as a client at ip,
// sends an offer and reads the answer; it returns the node of "joined".
func join(t *testing.T, base, ip, room, who string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok, err := signal.MintToken(testKey, signal.Claims{Room: room, Identity: who, Publish: true, Subscribe: true,
		Expires: time.Now().Add(time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	return signaltest.Join(t, ctx, base, ip, tok, "cliufrag"+who)
}

// routeOf asks GET /v1/route of the signal server at base for ip.
func routeOf(t *testing.T, base, ip string) string {
	t.Helper()
	res, err := http.Get(base + "/v1/route?ip=" + ip)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var a signal.RouteAnswer
	if err := json.NewDecoder(res.Body).Decode(&a); err != nil {
		return ""
	}
	return a.Node
}

// TestPlatform: three clustered NATS servers, two controllers, three SFU
// nodes (two in eu, one in us) and two signal servers. Clients joining
// through either signal server land on the node chosen for their address;
// a room's later participants follow the room to its node whichever signal
// server they reach; one NATS server dying loses no join and no room.
func TestPlatform(t *testing.T) {
	c := clustertest.Start(t, 3)
	for i, id := range []string{"ctl-1", "ctl-2"} {
		ctl, err := controller.New(controller.Config{ID: id, Bus: c.Config(id, bus.RoleController, "", i), Log: quiet,
			Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		testkit.Run(t, ctl.Run)
		t.Cleanup(func() { ctl.Close() })
	}
	nodes := map[string]*busNode{}
	for _, n := range [][2]string{{"eu-1", "eu"}, {"eu-2", "eu"}, {"us-1", "us"}} {
		nodes[n[0]] = startBusNode(t, c, n[0], n[1])
	}
	sigA, sigB := startSignal(t, c, "sig-a"), startSignal(t, c, "sig-b")
	dirConn := c.Connect("reader", bus.RoleSignal, "")
	dir := cluster.NewDirectory(dirConn.Conn())
	roomOn := func(room string) string {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		n, replace, ok := dir.RoomNode(ctx, room)
		if !ok || replace {
			return ""
		}
		return n
	}
	testkit.WaitFor(t, 10*time.Second, "signal servers hear all nodes", func() bool {
		for _, base := range []string{sigA, sigB} {
			if routeOf(t, base, "10.2.0.9") != "us-1" || routeOf(t, base, "10.1.0.9") != "eu-1" {
				return false
			}
		}
		return true
	})

	// Region by address, then load: eu clients spread over eu-1 and eu-2.
	euRooms := map[string]int{}
	var mu sync.Mutex
	for i, base := range []string{sigA, sigB, sigA, sigB} {
		room := "eu-room-" + string(rune('a'+i))
		n, err := join(t, base, "10.1.0."+string(rune('1'+i)), room, "alice")
		if err != nil {
			t.Fatalf("%s: %v", room, err)
		}
		if !strings.HasPrefix(n, "eu-") {
			t.Fatalf("eu client of %s placed on %s", room, n)
		}
		mu.Lock()
		euRooms[n]++
		mu.Unlock()
		testkit.WaitFor(t, 5*time.Second, room+" in the directory", func() bool { return roomOn(room) == n })
		// Load is announced every 200 ms: wait until both signal servers
		// route a new eu client to the least loaded eu node.
		want := "eu-1"
		if nodes["eu-2"].peers.Load() < nodes["eu-1"].peers.Load() {
			want = "eu-2"
		}
		testkit.WaitFor(t, 5*time.Second, "new load seen by both signal servers", func() bool {
			return routeOf(t, sigA, "10.1.9.9") == want && routeOf(t, sigB, "10.1.9.9") == want
		})
	}
	// The directory lists the rooms joined through both signal servers
	// (the room API's cluster scope).
	lctx, lcancel := context.WithTimeout(context.Background(), 5*time.Second)
	listed, err := dir.Rooms(lctx)
	lcancel()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range listed {
		names = append(names, r.Room)
	}
	if slices.Sort(names); fmt.Sprint(names) != "[eu-room-a eu-room-b eu-room-c eu-room-d]" {
		t.Fatalf("directory lists %v", names)
	}
	if euRooms["eu-1"] != 2 || euRooms["eu-2"] != 2 {
		t.Fatalf("eu rooms not balanced by load: %v", euRooms)
	}
	// A us client of an eu room goes to the room's node, through the other
	// signal server too.
	home := roomOn("eu-room-a")
	for _, base := range []string{sigB, sigA} {
		n, err := join(t, base, "10.2.0.7", "eu-room-a", "bob")
		if err != nil || n != home {
			t.Fatalf("us client of eu-room-a: %q %v, want %s", n, err, home)
		}
	}
	if n, err := join(t, sigB, "10.2.0.8", "us-room", "carol"); err != nil || n != "us-1" {
		t.Fatalf("us client: %q %v", n, err)
	}

	// One NATS server of three dies: every join still succeeds, every room
	// is still in the directory, newcomers still follow their room.
	rooms := []string{"eu-room-a", "eu-room-b", "eu-room-c", "eu-room-d", "us-room"}
	want := map[string]string{}
	for _, r := range rooms {
		testkit.WaitFor(t, 5*time.Second, r+" in the directory", func() bool { want[r] = roomOn(r); return want[r] != "" })
	}
	c.Servers[2].Close()
	for i, r := range rooms {
		base := []string{sigA, sigB}[i%2]
		n, err := join(t, base, "10.2.1.1", r, "late")
		if err != nil || n != want[r] {
			t.Fatalf("join of %s after a NATS server died: %q %v, want %s", r, n, err, want[r])
		}
	}
	for _, r := range rooms {
		testkit.WaitFor(t, 5*time.Second, r+" still in the directory", func() bool { return roomOn(r) == want[r] })
	}
}
