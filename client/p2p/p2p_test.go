package p2p

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/traverse-rtc/traverse/internal/stun"
	"github.com/traverse-rtc/traverse/internal/stun/stuntest"
	"github.com/traverse-rtc/traverse/internal/testkit"
	"github.com/traverse-rtc/traverse/internal/turn"
)

var loopback = netip.MustParseAddrPort("127.0.0.1:0")

func startSTUN(t *testing.T) string {
	return stuntest.Start(t, stun.Config{}, nil).Addr().String()
}

func startTURN(t *testing.T) *turn.Server {
	t.Helper()
	s, err := turn.New(turn.Config{Listen: loopback, TLSListen: loopback, Realm: "lab", Users: map[string]string{"u": "p"},
		AllowLoopbackPeers: true})
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, s.Run)
	return s
}

// blockNet is the host network with a switch that drops every datagram
// between the peers' direct sockets (TURN's sockets pass): a firewall.
type blockNet struct {
	hostNetwork
	blocked *atomic.Bool
	direct  *sync.Map // ports of the direct sockets
	first   atomic.Bool
}

func newBlockNets() (*blockNet, *blockNet, *atomic.Bool) {
	var b atomic.Bool
	var m sync.Map
	return &blockNet{blocked: &b, direct: &m}, &blockNet{blocked: &b, direct: &m}, &b
}

func (n *blockNet) ListenUDP(local netip.AddrPort) (net.PacketConn, error) {
	pc, err := n.hostNetwork.ListenUDP(local)
	if err != nil || !n.first.CompareAndSwap(false, true) {
		return pc, err
	}
	n.direct.Store(addrPortOf(pc.LocalAddr()).Port(), true)
	return &blockConn{PacketConn: pc, n: n}, nil
}

type blockConn struct {
	net.PacketConn
	n *blockNet
}

func (c *blockConn) drop(a net.Addr) bool {
	_, ok := c.n.direct.Load(addrPortOf(a).Port())
	return ok && c.n.blocked.Load()
}

func (c *blockConn) WriteTo(p []byte, a net.Addr) (int, error) {
	if c.drop(a) {
		return len(p), nil
	}
	return c.PacketConn.WriteTo(p, a)
}

func (c *blockConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, a, err := c.PacketConn.ReadFrom(p)
		if err != nil || !c.drop(a) {
			return n, a, err
		}
	}
}

// pairUp connects a and b through a Pipe with opts each.
func pairUp(t *testing.T, ao, bo []Option) (*Conn, *Conn) {
	t.Helper()
	sa, sb := Pipe("alice", "bob")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var b *Conn
	var berr error
	done := make(chan struct{})
	go func() { defer close(done); b, berr = Connect(ctx, sb, bo...) }()
	a, err := Connect(ctx, sa, ao...)
	<-done
	if err != nil || berr != nil {
		t.Fatalf("connect: %v / %v", err, berr)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func baseOpts(stunAddr string) []Option {
	return []Option{WithLocal(loopback), WithSTUN(stunAddr), WithoutNATDiscovery()}
}

// exchange sends n datagrams each way and checks they arrive in order.
func exchange(t *testing.T, a, b *Conn, n int) {
	t.Helper()
	for _, d := range [][2]*Conn{{a, b}, {b, a}} {
		for i := range n {
			if err := d[0].WriteDatagram(binary.BigEndian.AppendUint32(nil, uint32(i))); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		for i := range n {
			p, err := d[1].ReadDatagram(ctx)
			if err != nil {
				cancel()
				t.Fatalf("read %d: %v", i, err)
			}
			if got := binary.BigEndian.Uint32(p); got != uint32(i) {
				cancel()
				t.Fatalf("datagram %d: got %d", i, got)
			}
		}
		cancel()
	}
}

func TestDirect(t *testing.T) {
	st := startSTUN(t)
	a, b := pairUp(t, baseOpts(st), baseOpts(st))
	if a.Path().Kind != PathDirect || b.Path().Kind != PathDirect {
		t.Fatalf("paths %v / %v, want direct", a.Path(), b.Path())
	}
	exchange(t, a, b, 200)
	if s := a.Stats(); s.Lost != 0 || s.Forged != 0 || len(s.PeerKey) != 32 {
		t.Fatalf("stats %+v", s)
	}
	if ch := a.PathChanges(); len(ch) != 1 || ch[0].Reason != "first" {
		t.Fatalf("changes %+v", ch)
	}
}

func TestTURNTransports(t *testing.T) {
	st := startSTUN(t)
	ts := startTURN(t)
	for _, tc := range []struct {
		tr   string
		addr string
		want PathKind
	}{{"udp", ts.Addr().String(), PathTURNUDP}, {"tcp", ts.TCPAddr().String(), PathTURNTCP}, {"tls", ts.TLSAddr().String(), PathTURNTLS}} {
		t.Run(tc.tr, func(t *testing.T) {
			srv := TURNServer{Addr: tc.addr, Transport: tc.tr, Username: "u", Password: "p", Realm: "lab", InsecureSkipVerify: true}
			a, b := pairUp(t, append(baseOpts(st), WithRelayOnly(), WithTURN(srv)), append(baseOpts(st), WithRelayOnly(), WithTURN(srv)))
			if a.Path().Kind != tc.want {
				t.Fatalf("path %v, want %v", a.Path(), tc.want)
			}
			exchange(t, a, b, 100)
		})
	}
}

// TestUpgrade blocks the direct path, connects through TURN, streams
// datagrams, opens the direct path and checks the flow moves to it within
// 5 s with nothing lost or reordered.
func TestUpgrade(t *testing.T) {
	st := startSTUN(t)
	ts := startTURN(t)
	na, nb, blocked := newBlockNets()
	blocked.Store(true)
	srv := TURNServer{Addr: ts.Addr().String(), Transport: "udp", Username: "u", Password: "p", Realm: "lab"}
	opts := func(n Network) []Option {
		return append(baseOpts(st), WithNetwork(n), WithTURN(srv), WithDirectTimeout(300*time.Millisecond))
	}
	a, b := pairUp(t, opts(na), opts(nb))
	if a.Path().Kind != PathTURNUDP {
		t.Fatalf("path %v, want turn-udp", a.Path())
	}
	const total = 3000
	var got []uint32
	recvDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for len(got) < total {
			p, err := b.ReadDatagram(ctx)
			if err != nil {
				recvDone <- err
				return
			}
			got = append(got, binary.BigEndian.Uint32(p))
		}
		recvDone <- nil
	}()
	var opened time.Time
	tk := time.NewTicker(time.Millisecond)
	defer tk.Stop()
	for i := range total {
		<-tk.C
		if i == total/3 {
			blocked.Store(false)
			opened = time.Now()
		}
		if err := a.WriteDatagram(binary.BigEndian.AppendUint32(nil, uint32(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-recvDone; err != nil {
		t.Fatalf("received %d of %d: %v", len(got), total, err)
	}
	for i, v := range got {
		if v != uint32(i) {
			t.Fatalf("datagram %d is %d: lost or reordered", i, v)
		}
	}
	var up time.Time
	for _, ch := range a.PathChanges() {
		if ch.Reason == "upgrade" && ch.To.Kind == PathDirect {
			up = ch.At
		}
	}
	if up.IsZero() || up.Sub(opened) > 5*time.Second {
		t.Fatalf("no upgrade within 5s: changes %+v", a.PathChanges())
	}
	t.Logf("upgraded %v after the direct path opened", up.Sub(opened))
}

func TestPinnedKey(t *testing.T) {
	st := startSTUN(t)
	_, pub, _ := GenerateKey()
	priv2, pub2, _ := GenerateKey()
	sa, sb := Pipe("alice", "bob")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		c, err := Connect(ctx, sb, append(baseOpts(st), WithStaticKey(priv2, pub2))...)
		if c != nil {
			c.Close()
		}
		errc <- err
	}()
	_, err := Connect(ctx, sa, append(baseOpts(st), WithPeerKey(pub))...)
	if !errors.Is(err, ErrHandshake) {
		t.Fatalf("connect with a wrong pinned key: %v, want ErrHandshake", err)
	}
	cancel()
	<-errc
}

// TestMain checks that no test leaves a goroutine behind: every Conn, TURN
// allocation and server has been closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
