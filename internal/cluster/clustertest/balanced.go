package clustertest

import (
	"context"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/logging"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/netlab"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// BalancedLab is the lab of a balanced SFU group (docs/cascade.md, "Behind
// a UDP load balancer"): a balancer (a routed netlab NAT whose outside
// address is the group's public address) with the nodes' hosts on its
// private side, and client hosts of two addresses each on the lab's
// internet. The balancer spreads UDP to Port over the nodes by the
// kernel's jhash of the client's address and port (netlab.NAT.BalanceUDP).
type BalancedLab struct {
	Lab     *netlab.Lab
	LB      *netlab.NAT
	Nodes   []*netlab.Host
	Clients []*netlab.Host
	Port    uint16
	Seed    uint32
}

// NewBalancedLab builds the lab: nodes node hosts, clients client hosts;
// torn down when the test ends. It skips when not root (netlab.New).
func NewBalancedLab(t *testing.T, nodes, clients int, port uint16) *BalancedLab {
	t.Helper()
	lab := netlab.New(t)
	b := &BalancedLab{Lab: lab, LB: lab.NAT("lb", lab.Internet(), netlab.Routed), Port: port, Seed: 0x5eed}
	for i := range nodes {
		b.Nodes = append(b.Nodes, lab.Host(fmt.Sprintf("n%d", i+1), b.LB))
	}
	for i := range clients {
		b.Clients = append(b.Clients, lab.Host(fmt.Sprintf("c%d", i+1), lab.Internet(), netlab.Addrs(2)))
	}
	if err := lab.Err(); err != nil {
		t.Fatal(err)
	}
	var backends []netip.Addr
	for _, h := range b.Nodes {
		backends = append(backends, h.Addr())
	}
	if err := b.LB.BalanceUDP(port, backends, b.Seed); err != nil {
		t.Fatal(err)
	}
	return b
}

// Public is the group's public address: the balancer's outside address.
func (b *BalancedLab) Public() netip.Addr { return b.LB.Addr() }

// PortTo returns addr with the first port from 40000 that the balancer's
// hash sends to node.
func (b *BalancedLab) PortTo(addr netip.Addr, node int) netip.AddrPort {
	src := netip.AddrPortFrom(addr, 40000)
	for netlab.Backend(src, len(b.Nodes), b.Seed) != node {
		src = netip.AddrPortFrom(addr, src.Port()+1)
	}
	return src
}

// Dial joins a client of host that sends its media from srcs (its host
// candidates, one socket each), publishing video and audio and
// subscribing, in room through signal at wsURL; closed when the test ends.
func (b *BalancedLab) Dial(t *testing.T, host *netlab.Host, srcs []netip.AddrPort, identity, room, wsURL string,
	token loadgen.TokenFunc) *loadgen.Client {
	t.Helper()
	lf := logging.NewDefaultLoggerFactory()
	lf.DefaultLogLevel = logging.LogLevelDisabled
	var muxes []ice.UDPMux
	for _, src := range srcs {
		conn, err := host.ListenUDP(src)
		if err != nil {
			t.Fatal(err)
		}
		m := ice.NewUDPMuxDefault(ice.UDPMuxParams{UDPConn: conn, Logger: lf.NewLogger("mux")})
		t.Cleanup(func() { _ = m.Close() })
		muxes = append(muxes, m)
	}
	var mux ice.UDPMux = muxes[0]
	if len(muxes) > 1 {
		mux = ice.NewMultiUDPMuxDefault(muxes...)
	}
	api, err := loadgen.NewAPI(false, srcs[0].Addr(), loadgen.WithUDPMux(mux))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := loadgen.Dial(ctx, api, loadgen.NewWSSignaler(wsURL, token),
		loadgen.ClientConfig{Room: room, Identity: identity, Publish: true, Subscribe: true, VideoBitrate: 120_000})
	if err != nil {
		t.Fatalf("client %s (%v): %v", identity, srcs, err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// WaitConnected waits until every client is connected.
func WaitConnected(t *testing.T, clients ...*loadgen.Client) {
	t.Helper()
	for i, cl := range clients {
		select {
		case <-cl.Connected():
		case <-time.After(30 * time.Second):
			t.Fatalf("client %d never connected", i)
		}
	}
}

// DialSpread joins one client per entry of want, each from its own source
// address of the client hosts (in order), in room through signal at wsURL:
// client i sends its media from the first port from 40000 that the
// balancer's hash sends to node want[i] (PortTo). It returns once all are
// connected.
func (b *BalancedLab) DialSpread(t *testing.T, want []int, room, wsURL string, token loadgen.TokenFunc) []*loadgen.Client {
	t.Helper()
	var srcs []netip.Addr
	var hosts []*netlab.Host
	for _, h := range b.Clients {
		for _, a := range h.Addrs() {
			srcs, hosts = append(srcs, a), append(hosts, h)
		}
	}
	if len(want) > len(srcs) {
		t.Fatalf("%d clients, %d client addresses", len(want), len(srcs))
	}
	var out []*loadgen.Client
	for i, w := range want {
		out = append(out, b.Dial(t, hosts[i], []netip.AddrPort{b.PortTo(srcs[i], w)}, fmt.Sprintf("c%d", i), room, wsURL, token))
	}
	WaitConnected(t, out...)
	for i, cl := range out {
		t.Logf("client %d: join to connected %v", i, cl.JoinTime().Round(time.Millisecond))
	}
	return out
}

// WaitEveryoneReceives waits until every client receives at least 30
// packets of video and of audio from each of the others.
func WaitEveryoneReceives(t *testing.T, clients []*loadgen.Client) {
	t.Helper()
	for i, cl := range clients {
		testkit.WaitFor(t, 40*time.Second, fmt.Sprintf("client %d receiving the others' video and audio", i), func() bool {
			v, a := cl.Receiving(30)
			return v >= len(clients)-1 && a >= len(clients)-1
		})
	}
}

// Signal runs a signal server in the test process over bc (demo tokens,
// the cascade on), waits until it sees every node of the lab live in
// group with the lab's public address, and returns its backend and its
// WebSocket URL; both end with the test.
func (b *BalancedLab) Signal(t *testing.T, bc *bus.Client, group string) (*signal.BusBackend, string) {
	t.Helper()
	be, err := signal.NewBusBackend(bc, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Close() })
	testkit.WaitFor(t, 30*time.Second, "signal to see the group's nodes", func() bool {
		n := 0
		for _, nd := range be.Nodes() {
			if nd.Group == group && nd.Public == b.Public() {
				n++
			}
		}
		return n == len(b.Nodes)
	})
	srv, err := signal.New(signal.Config{Key: []byte("balanced-group-lab-key"), Backend: be, DemoTokens: true, Cascade: true})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { hs.Close(); _ = srv.Close() })
	return be, "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws"
}

// Expect returns how many clients of want each of n nodes serves.
func Expect(want []int, n int) []int {
	out := make([]int, n)
	for _, w := range want {
		out[w]++
	}
	return out
}
