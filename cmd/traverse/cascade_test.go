package main

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// cascadeSite is where startCascade runs processes: their listeners on
// addr's ports from base, each process under wrap (startChildIn; nil: in
// this network namespace).
type cascadeSite struct {
	addr netip.Addr
	base int
	wrap []string
}

func (s cascadeSite) port(i int) string { return netip.AddrPortFrom(s.addr, uint16(s.base+i)).String() }

// cascadeNodes are the SFU nodes' names, in the order of startCascade's
// sites.
var cascadeNodes = [3]string{"a", "b", "c"}

// cascadeStack is a cascade of processes: three "traverse bus", a
// "traverse controller --cascade", three "traverse sfu --cascade-listen"
// (a, b, c) and a "traverse signal --cascade --node-capacity 2" placing by
// load (one participant is half a node, so one room's first three clients
// land on a, b and c).
type cascadeStack struct {
	ctlAdmin string    // the controller's admin listener
	http     string    // signal's HTTP listener (the web page when web is set, /ws, /v1/route)
	admins   [3]string // the nodes' admin listeners
	relays   [3]string // the nodes' relay ports
	key      string    // signal's token key
	api      *webrtc.API
}

// startCascade starts a cascadeStack: the bus, the controller and signal
// at hub (ports base to base+11), node i at nodes[i] (ports base+12+4i to
// base+15+4i); api is the pion API of its clients (dial). It returns once
// signal is ready and the controller leads.
func startCascade(t *testing.T, hub cascadeSite, nodes [3]cascadeSite, web bool, api *webrtc.API) *cascadeStack {
	t.Helper()
	bc := startBusClusterAt(t, hub.addr, hub.base, hub.wrap, "--node", "a", "--node", "b", "--node", "c")
	nats := strings.Join(bc.urls, ",")
	secret := filepath.Join(t.TempDir(), "cascade.secret")
	if err := os.WriteFile(secret, bytes.Repeat([]byte("x"), 40), 0o600); err != nil {
		t.Fatal(err)
	}
	cs := &cascadeStack{ctlAdmin: hub.port(9), http: hub.port(10), key: "0123456789abcdef-key", api: api}
	startChildIn(t, hub.wrap, "controller", "--nats", nats, "--nats-creds", filepath.Join(bc.creds, "controller.creds"),
		"--id", "ctl-1", "--admin", cs.ctlAdmin, "--cascade", "--log-level", "warn")
	for i, n := range cascadeNodes {
		s, p := nodes[i], 12+4*i
		cs.admins[i], cs.relays[i] = s.port(p+2), s.port(p+3)
		startChildIn(t, s.wrap, "sfu", "--nats", nats, "--nats-creds", filepath.Join(bc.creds, "sfu-"+n+".creds"),
			"--udp", s.port(p), "--tcp", s.port(p+1), "--admin", cs.admins[i], "--cascade-listen", cs.relays[i],
			"--cascade-secret-file", secret, "--log-level", "warn")
	}
	sigAdmin := hub.port(11)
	args := []string{"signal", "--nats", nats, "--nats-creds", filepath.Join(bc.creds, "signal.creds"),
		"--http", cs.http, "--admin", sigAdmin, "--token-key", cs.key, "--node-capacity", "2", "--cascade",
		"--log-level", "warn"}
	if !web {
		args = append(args, "--no-web")
	}
	p := startChildIn(t, hub.wrap, args...)
	waitReady(t, sigAdmin, 30*time.Second, p.exited, p.output)
	testkit.WaitFor(t, 30*time.Second, "the controller leads", func() bool {
		return metricValue(cs.ctlAdmin, "traverse_controller_leader") == "1"
	})
	return cs
}

// token mints a token of room for identity.
func (cs *cascadeStack) token(room, identity string, publish bool) (string, error) {
	return signal.MintToken([]byte(cs.key), signal.Claims{Room: room, Identity: identity, Publish: publish, Subscribe: true,
		Expires: time.Now().Add(time.Hour).Unix()})
}

// awaitRoute waits until signal routes room's next client to node want.
func (cs *cascadeStack) awaitRoute(t *testing.T, room, want string) {
	t.Helper()
	testkit.WaitFor(t, 15*time.Second, "signal routing the next client of "+room+" to "+want, func() bool {
		return routeOf(cs.http, "10.0.0.1", room) == want
	})
}

// dial joins a pion client (loadgen) through signal once it would land
// on want, and checks that it did.
func (cs *cascadeStack) dial(t *testing.T, want string, cfg loadgen.ClientConfig) *loadgen.Client {
	t.Helper()
	cs.awaitRoute(t, cfg.Room, want)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sig := loadgen.NewWSSignaler("ws://"+cs.http+"/ws", func(_ context.Context, room, identity string) (string, error) {
		return cs.token(room, identity, true)
	}).WithHTTPClient(testHTTP)
	cl, err := loadgen.Dial(ctx, cs.api, sig, cfg)
	if err != nil {
		t.Fatalf("dial %s: %v", cfg.Identity, err)
	}
	t.Cleanup(func() { cl.Close() })
	if sig.Node() != want {
		t.Fatalf("%s joined %s, want %s", cfg.Identity, sig.Node(), want)
	}
	return cl
}

// metric is the unlabelled metric name of node i (0 when absent).
func (cs *cascadeStack) metric(i int, name string) float64 {
	v, _ := strconv.ParseFloat(metricValue(cs.admins[i], name), 64)
	return v
}

// receivesAV waits until sub receives at least 50 packets of a video and
// of an audio track.
func receivesAV(t *testing.T, name string, sub *loadgen.Client) {
	t.Helper()
	testkit.WaitFor(t, 30*time.Second, "the subscriber on "+name+" receiving a's video and audio", func() bool {
		return sub.Receives(1, 1, 50)
	})
}

// TestCascadeProcesses: rooms span SFU processes on loopback
// (startCascade). A publisher joins and lands on a; the next client, of
// the same room, on b (less loaded by more than the room's bonus), the
// third on c. Both subscribers receive the publisher's video and audio,
// relayed from a's process to b's and c's.
func TestCascadeProcesses(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	site := cascadeSite{addr: lo, base: testkit.FreePorts(t, 24, lo)}
	api, err := loadgen.NewAPI(false, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	cs := startCascade(t, site, [3]cascadeSite{site, site, site}, false, api)
	cs.dial(t, "a", loadgen.ClientConfig{Room: "r1", Identity: "pub", Publish: true, VideoBitrate: 300_000})
	subB := cs.dial(t, "b", loadgen.ClientConfig{Room: "r1", Identity: "sub-b", Subscribe: true})
	subC := cs.dial(t, "c", loadgen.ClientConfig{Room: "r1", Identity: "sub-c", Subscribe: true})
	receivesAV(t, "b", subB)
	receivesAV(t, "c", subC)
	for i := 1; i < 3; i++ {
		if d := cs.metric(i, "traverse_relay_delivered_total"); d < 100 {
			t.Errorf("node %s delivered %v relayed messages", cascadeNodes[i], d)
		}
	}
}
