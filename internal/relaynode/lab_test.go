package relaynode_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/traverse-rtc/traverse/client/nat"
	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/bus/bustest"
	"github.com/traverse-rtc/traverse/internal/netlab"
	"github.com/traverse-rtc/traverse/internal/relaynode"
	"github.com/traverse-rtc/traverse/internal/signal"
	stunsrv "github.com/traverse-rtc/traverse/internal/stun"
	"github.com/traverse-rtc/traverse/internal/stun/stuntest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// labScene is a lab internet with an RFC 5780 STUN server, a bus (in the
// root namespace: the bus is not what the lab tests) and signal's relay
// service on it.
type labScene struct {
	t    *testing.T
	lab  *netlab.Lab
	stun netip.AddrPort
	emb  *bus.Embedded
	rs   *signal.RelayService
	pub  ed25519.PublicKey
}

func newLabScene(t *testing.T) *labScene {
	t.Helper()
	lab := netlab.New(t)
	srv := lab.Host("stun", lab.Internet(), netlab.Addrs(2))
	s := &labScene{t: t, lab: lab}
	a := srv.Addrs()
	if err := srv.Do(func() error {
		s.stun = stuntest.Start(t, stunsrv.Config{Listen: netip.AddrPortFrom(a[0], 3478), OtherAddress: a[1]}, nil).Addr()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s.emb = bustest.Start(t)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	s.pub = pub
	var err error
	s.rs, err = signal.NewRelayService(signal.RelayConfig{Bus: s.connect(bus.RoleSignal, ""), TokenKey: []byte("0123456789abcdef"), GrantKey: priv})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *labScene) connect(role bus.Role, node string) *bus.Client {
	return bustest.Connect(s.t, s.emb, role, node)
}

// node starts relay node cfg.ID on host h, returning it once signal knows it.
func (s *labScene) node(h *netlab.Host, cfg relaynode.Config, before ...func(*relaynode.Node)) *relaynode.Node {
	s.t.Helper()
	cfg.GrantKey = s.pub
	cfg.STUN = []string{s.stun.String()}
	cfg.DiscoverRTO = 30 * time.Millisecond
	cfg.BusClient = s.connect(bus.RoleRelay, cfg.ID)
	if !cfg.Listen.IsValid() {
		cfg.Listen = netip.AddrPortFrom(h.Addr(), relaynode.DefaultListenPort)
	}
	var n *relaynode.Node
	if err := h.Do(func() error {
		var err error
		n, err = relaynode.New(cfg)
		return err
	}); err != nil {
		s.t.Fatal(err)
	}
	for _, f := range before {
		f(n)
	}
	testkit.Run(s.t, n.Run)
	s.t.Cleanup(func() { n.Close() })
	s.t.Logf("relay %s: public %s, nat %v, mapping %s, filtering %s", cfg.ID, n.Public(), n.NAT().NAT, n.NAT().Mapping, n.NAT().Filtering)
	testkit.WaitFor(s.t, 5*time.Second, "signal hears of "+cfg.ID, func() bool {
		o, _ := s.rs.Offer(signal.RelayRequest{Peer: "x"})
		for _, on := range o.Nodes {
			if on.ID == cfg.ID {
				return true
			}
		}
		// Nodes incompatible with unknown peers are not offered: accept
		// an announcement seen on the bus instead.
		return n.Ready() == nil && s.knows(cfg.ID)
	})
	return n
}

func (s *labScene) knows(id string) bool {
	o, _ := s.rs.Offer(signal.RelayRequest{Peer: "x", Self: openPeer, Other: openPeer})
	for _, on := range o.Nodes {
		if on.ID == id {
			return true
		}
	}
	return false
}

var openPeer = signal.RelayPeer{NAT: signal.RelayNAT{Mapping: nat.EndpointIndependent, Filtering: nat.EndpointIndependent}}

// peer is one side: its host, its relay socket's public address and NAT.
type peer struct {
	h      *netlab.Host
	pc     *net.UDPConn
	public netip.AddrPort
	nat    nat.Report
}

func (s *labScene) peer(h *netlab.Host) *peer {
	s.t.Helper()
	p := &peer{h: h}
	if err := h.Do(func() error {
		var err error
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if p.nat, err = nat.Discover(ctx, nat.Config{Server: s.stun.String(), RTO: 50 * time.Millisecond, Attempts: 3}); err != nil {
			return err
		}
		p.pc, err = p.listen()
		return err
	}); err != nil {
		s.t.Fatal(err)
	}
	p.public = srflx(s.t, p.pc, s.stun)
	return p
}

func (p *peer) listen() (*net.UDPConn, error) {
	var pc *net.UDPConn
	err := p.h.Do(func() error {
		var err error
		pc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.h.Addr(), 0)))
		return err
	})
	return pc, err
}

func srflx(t *testing.T, pc *net.UDPConn, server netip.AddrPort) netip.AddrPort {
	t.Helper()
	buf := make([]byte, 1500)
	for range 5 {
		req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
		_, _ = pc.WriteToUDPAddrPort(req.Raw, server)
		_ = pc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, _, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			continue
		}
		m := &stun.Message{Raw: buf[:n]}
		var xa stun.XORMappedAddress
		if m.Decode() == nil && m.TransactionID == req.TransactionID && xa.GetFrom(m) == nil {
			a, _ := netip.AddrFromSlice(xa.IP)
			_ = pc.SetReadDeadline(time.Time{})
			return netip.AddrPortFrom(a.Unmap(), uint16(xa.Port))
		}
	}
	t.Fatal("no STUN answer")
	return netip.AddrPort{}
}

func (p *peer) relayPeer(region string) signal.RelayPeer {
	return signal.RelayPeer{Region: region, Addrs: []string{p.public.String()},
		NAT: signal.RelayNAT{NAT: p.nat.NAT, UDPBlocked: p.nat.UDPBlocked, Mapping: p.nat.Mapping, Filtering: p.nat.Filtering}}
}

// offers turns signal's offer into each side's list.
func offers(t *testing.T, o signal.RelayOffer, side int) []relaynode.Offer {
	t.Helper()
	var out []relaynode.Offer
	for _, n := range o.Nodes {
		g, err := base64.RawURLEncoding.DecodeString(n.Grants[side])
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, relaynode.Offer{Node: n.ID, Addr: netip.MustParseAddrPort(n.Addr), Grant: g})
	}
	return out
}

// bindBoth runs BindFirst on both peers at once, as two clients would.
func bindBoth(t *testing.T, a, b *peer, offer signal.RelayOffer, per time.Duration) (la, lb *relaynode.Link, ia, ib int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var ea, eb error
	wg.Add(2)
	go func() {
		defer wg.Done()
		la, ia, ea = relaynode.BindFirst(ctx, a.listenFirst(), offers(t, offer, 0), per)
	}()
	go func() {
		defer wg.Done()
		lb, ib, eb = relaynode.BindFirst(ctx, b.listenFirst(), offers(t, offer, 1), per)
	}()
	wg.Wait()
	if ea != nil || eb != nil {
		t.Fatalf("bind: %v / %v", ea, eb)
	}
	t.Cleanup(func() { la.Close(); lb.Close() })
	return la, lb, ia, ib
}

// listenFirst hands out the socket whose public address signal knows
// first, fresh ones after.
func (p *peer) listenFirst() func() (net.PacketConn, error) {
	first := p.pc
	return func() (net.PacketConn, error) {
		if first != nil {
			pc := first
			first = nil
			return pc, nil
		}
		pc, err := p.listen()
		return pc, err
	}
}

func exchange(t *testing.T, from, to *relaynode.Link, count int) {
	t.Helper()
	buf := make([]byte, 1500)
	for i := range count {
		if err := from.WriteTo([]byte{byte(i)}, netip.AddrPort{}); err != nil {
			t.Fatal(err)
		}
		_ = to.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := to.ReadFrom(buf)
		if err != nil || n != 1 || buf[0] != byte(i) {
			t.Fatalf("datagram %d: got %x, %v", i, buf[:n], err)
		}
	}
}

// Two peers that cannot go direct (a symmetric NAT and an
// address-and-port-dependent filter) get a relay node from signal and
// relay through the first one both reach: the node behind an APDF NAT is
// never offered (the symmetric peer cannot reach it); the nearest node
// (their region) misjudged its own APDF filter as address-dependent, so it
// is offered, but only peer b reaches it (a's symmetric NAT sends from
// another port than the one the node punched to): both abandon it after
// the per-node timeout; the node behind an address-dependent filter, which
// signal told to punch toward both peers, carries the session.
func TestLabRelayBetweenNATs(t *testing.T) {
	s := newLabScene(t)
	lab := s.lab
	natA := lab.NAT("nata", lab.Internet(), netlab.SymmetricRandom)
	natB := lab.NAT("natb", lab.Internet(), netlab.EIMAPDF)
	natR1 := lab.NAT("natr1", lab.Internet(), netlab.EIMAPDF)
	natR2 := lab.NAT("natr2", lab.Internet(), netlab.EIMADF)
	natR3 := lab.NAT("natr3", lab.Internet(), netlab.EIMAPDF)
	hA, hB := lab.Host("a", natA), lab.Host("b", natB)
	hR1, hR2, hR3 := lab.Host("r1", natR1), lab.Host("r2", natR2), lab.Host("r3", natR3)
	if err := lab.Err(); err != nil {
		t.Fatal(err)
	}
	s.node(hR1, relaynode.Config{ID: "apdf-eu", Region: "eu"})
	adf := s.node(hR2, relaynode.Config{ID: "adf-us", Region: "us", Volunteer: true})
	liar := s.node(hR3, relaynode.Config{ID: "liar-eu", Region: "eu"}, func(n *relaynode.Node) {
		relaynode.MisjudgeFiltering(n, nat.AddressDependent)
	})
	a, b := s.peer(hA), s.peer(hB)
	t.Logf("peer a %s (%s/%s), peer b %s (%s/%s)", a.public, a.nat.Mapping, a.nat.Filtering, b.public, b.nat.Mapping, b.nat.Filtering)

	// They cannot go direct: each sends to the other's public address.
	_, _ = a.pc.WriteToUDPAddrPort([]byte("hi"), b.public)
	_, _ = b.pc.WriteToUDPAddrPort([]byte("hi"), a.public)
	_, _ = a.pc.WriteToUDPAddrPort([]byte("hi"), b.public)
	_ = b.pc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if _, _, err := b.pc.ReadFromUDPAddrPort(make([]byte, 10)); err == nil {
		t.Fatal("the direct path works: the test proves nothing")
	}
	_ = b.pc.SetReadDeadline(time.Time{})

	offer, err := s.rs.Offer(signal.RelayRequest{Peer: "b", Self: a.relayPeer("eu"), Other: b.relayPeer("eu")})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, n := range offer.Nodes {
		ids = append(ids, n.ID)
	}
	if len(ids) != 2 || ids[0] != "liar-eu" || ids[1] != "adf-us" {
		t.Fatalf("offered %v, want [liar-eu adf-us] (apdf-eu incompatible with a symmetric peer)", ids)
	}
	start := time.Now()
	la, lb, ia, ib := bindBoth(t, a, b, offer, 1500*time.Millisecond)
	if ia != 1 || ib != 1 {
		t.Fatalf("peers bound offers %d and %d, want 1 (adf-us)", ia, ib)
	}
	t.Logf("both bound on %s in %s (after abandoning %s)", ids[ia], time.Since(start).Round(time.Millisecond), ids[0])
	if got := relaynode.Binds(liar); got != 1 {
		t.Errorf("liar-eu bound %v peers, want 1 (b reaches it, a does not)", got)
	}
	if got := relaynode.Binds(adf); got != 2 {
		t.Errorf("adf-us bound %v peers, want 2", got)
	}
	exchange(t, la, lb, 50)
	exchange(t, lb, la, 50)
}

// A volunteer behind its own NAT (address-dependent filter, 1 s mapping
// timeout) sends keepalives, is reachable at its announced address three
// timeouts later, and holds its caps: a second session is refused, and the
// bandwidth cap drops what exceeds it, counted. (The lab's Linux NAT keeps
// the port when the node's punches re-create an expired mapping, so here
// reachability would survive without keepalives; they matter on NATs that
// pick a fresh port, which the lab does not model for EIM kinds.)
func TestLabVolunteerCaps(t *testing.T) {
	s := newLabScene(t)
	lab := s.lab
	natV := lab.NAT("natv", lab.Internet(), netlab.EIMADF, netlab.MappingTimeout(time.Second))
	hV := lab.Host("v", natV)
	hA, hB := lab.Host("a", lab.Internet()), lab.Host("b", lab.Internet())
	if err := lab.Err(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	const rate = 400_000 // bits/s: 50 kB/s
	v := s.node(hV, relaynode.Config{ID: "vol", Volunteer: true, MaxSessions: 1, MaxBitrate: rate, Burst: 5000,
		Keepalive: 300 * time.Millisecond, Registerer: reg})
	// Three mapping timeouts pass.
	testkit.WaitFor(t, 10*time.Second, "3 s of keepalives", func() bool {
		return testutil.ToFloat64(counter(t, reg, "traverse_relay_keepalives_total")) >= 6
	})
	a, b := s.peer(hA), s.peer(hB)
	c := s.peer(lab.Host("c", lab.Internet()))
	offer, err := s.rs.Offer(signal.RelayRequest{Peer: "b", Self: a.relayPeer(""), Other: b.relayPeer("")})
	if err != nil || len(offer.Nodes) != 1 {
		t.Fatalf("offer %+v, %v", offer, err)
	}
	// A second session's grants, taken while the volunteer has room.
	offer2, err := s.rs.Offer(signal.RelayRequest{Peer: "d", Self: c.relayPeer(""), Other: c.relayPeer("")})
	if err != nil || len(offer2.Nodes) != 1 {
		t.Fatalf("offer %+v, %v", offer2, err)
	}
	if got := offer.Nodes[0].Addr; got != v.Public().String() {
		t.Fatalf("offered %s, the volunteer's public address is %s", got, v.Public())
	}
	la, lb, _, _ := bindBoth(t, a, b, offer, 3*time.Second)
	exchange(t, la, lb, 10)

	// Session cap: the second session is refused by the node (and signal
	// stops offering it, checked at the end). Traffic goes on at once: the
	// 1 s NAT timeout is shorter than the links' 2 s keepalive.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := relaynode.Bind(ctx, c.pc, netip.MustParseAddrPort(offer2.Nodes[0].Addr), offers(t, offer2, 0)[0].Grant); !errors.Is(err, relaynode.ErrFull) {
		t.Fatalf("second session: %v, want ErrFull", err)
	}

	// Bandwidth cap through the NAT.
	payload := make([]byte, 999)
	start := time.Now()
	sent := 0
	for time.Since(start) < 600*time.Millisecond && sent < 1000 {
		if err := la.WriteTo(payload, netip.AddrPort{}); err != nil {
			t.Fatal(err)
		}
		sent++
		if sent%5 == 0 {
			time.Sleep(5 * time.Millisecond) // ~1 MB/s offered, 20x the cap
		}
	}
	elapsed := time.Since(start)
	got := 0
	buf := make([]byte, 1500)
	for {
		_ = lb.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, _, err := lb.ReadFrom(buf); err != nil {
			break
		}
		got++
	}
	allowed := (5000 + elapsed.Seconds()*rate/8) / 1000
	dropped := testutil.ToFloat64(counterVec(t, reg, "traverse_relay_dropped_total", "bandwidth"))
	t.Logf("offered %d frames in %s, %d relayed, cap allows %.0f, %v dropped as bandwidth", sent, elapsed, got, allowed, dropped)
	if float64(got) > allowed+1 || got == 0 {
		t.Errorf("relayed %d frames, cap allows %.0f", got, allowed)
	}
	if dropped == 0 || int(dropped) > sent-got {
		t.Errorf("bandwidth drops %v for %d sent, %d relayed", dropped, sent, got)
	}
	testkit.WaitFor(t, 5*time.Second, "signal sees the volunteer full", func() bool {
		o, _ := s.rs.Offer(signal.RelayRequest{Peer: "d", Self: c.relayPeer(""), Other: c.relayPeer("")})
		return len(o.Nodes) == 0
	})
}

func counter(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	return collector{t: t, reg: reg, name: name}
}

func counterVec(t *testing.T, reg *prometheus.Registry, name, reason string) prometheus.Collector {
	return collector{t: t, reg: reg, name: name, reason: reason}
}

// collector reads one metric of reg for testutil.ToFloat64.
type collector struct {
	t            *testing.T
	reg          *prometheus.Registry
	name, reason string
}

func (c collector) Describe(chan<- *prometheus.Desc) {}
func (c collector) Collect(ch chan<- prometheus.Metric) {
	mfs, err := c.reg.Gather()
	if err != nil {
		c.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != c.name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if c.reason != "" && (len(m.GetLabel()) == 0 || m.GetLabel()[0].GetValue() != c.reason) {
				continue
			}
			ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(c.name, "", nil, nil), prometheus.CounterValue, m.GetCounter().GetValue())
			return
		}
	}
	ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(c.name, "", nil, nil), prometheus.CounterValue, 0)
}
