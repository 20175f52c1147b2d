package netlab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// echo is a UDP socket on a lab host answering every datagram with the
// source address it saw ("ip:port"), so a prober learns its mapping.
type echo struct {
	conn *net.UDPConn
	addr netip.AddrPort
	wg   sync.WaitGroup
}

// listen opens a UDP socket on h (addr may be the zero AddrPort: any
// address, a free port), closed when the test ends.
func listen(t *testing.T, h *Host, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := h.ListenUDP(addr)
	if err != nil {
		t.Fatalf("listen %s on %s: %v", addr, h.Name(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newEcho(t *testing.T, h *Host, addr netip.AddrPort) *echo {
	t.Helper()
	c, err := h.ListenUDP(addr)
	if err != nil {
		t.Fatalf("listen %s on %s: %v", addr, h.Name(), err)
	}
	e := &echo{conn: c, addr: c.LocalAddr().(*net.UDPAddr).AddrPort()}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if strings.HasPrefix(string(buf[:n]), "probe") {
				_, _ = c.WriteToUDPAddrPort([]byte(from.String()), from)
			}
		}
	}()
	t.Cleanup(func() { c.Close(); e.wg.Wait() })
	return e
}

// mapped sends a probe from c to e and returns the source address e saw.
func mapped(t *testing.T, c *net.UDPConn, to netip.AddrPort) (netip.AddrPort, error) {
	t.Helper()
	buf := make([]byte, 1500)
	for range 3 { // the lab loses nothing unless told to; retry anyway
		if _, err := c.WriteToUDPAddrPort([]byte("probe"), to); err != nil {
			return netip.AddrPort{}, err
		}
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			if from == to {
				return netip.ParseAddrPort(string(buf[:n]))
			}
		}
	}
	return netip.AddrPort{}, fmt.Errorf("no answer from %s", to)
}

// world is a lab with a server host (two addresses, two echo ports on the
// first, one on the second) on the internet and a client behind a NAT.
type world struct {
	lab           *Lab
	nat           *NAT
	server        *Host
	client        *Host
	s11, s12, s21 *echo // address 1 port 1, address 1 port 2, address 2 port 1
}

func newWorld(t *testing.T, kind Kind) *world {
	lab := New(t)
	w := &world{lab: lab}
	w.server = lab.Host("server", lab.Internet(), Addrs(2))
	w.nat = lab.NAT("nat", lab.Internet(), kind)
	w.client = lab.Host("client", w.nat)
	a := w.server.Addrs()
	w.s11 = newEcho(t, w.server, netip.AddrPortFrom(a[0], 3478))
	w.s12 = newEcho(t, w.server, netip.AddrPortFrom(a[0], 3479))
	w.s21 = newEcho(t, w.server, netip.AddrPortFrom(a[1], 3478))
	return w
}

func TestAddressPlan(t *testing.T) {
	lab := New(t)
	srv := lab.Host("server", lab.Internet(), Addrs(2))
	n := lab.NAT("nat", lab.Internet(), EIMAPDF)
	r := lab.NAT("router", lab.Internet(), Routed)
	c := lab.Host("client", n)
	p := lab.Host("pub", r)
	for _, tc := range []struct {
		got  []netip.Addr
		want string
	}{
		{srv.Addrs(), "[203.0.113.2 203.0.113.3]"},
		{n.Addrs(), "[203.0.113.4]"},
		{r.Addrs(), "[203.0.113.5]"},
		{c.Addrs(), "[10.1.0.2]"},
		{p.Addrs(), "[198.51.100.2]"},
	} {
		if got := fmt.Sprint(tc.got); got != tc.want {
			t.Errorf("addresses %s, want %s", got, tc.want)
		}
	}
	for _, node := range lab.Nodes() {
		if _, err := os.Stat(node.Path()); err != nil {
			t.Errorf("namespace of %s: %v", node.Name(), err)
		}
	}
	// The lab has no way out: the client's routes end at the internet.
	err := c.Do(func() error {
		c, err := net.DialTimeout("tcp", "127.0.0.53:1", time.Second)
		if err == nil {
			c.Close()
			return errors.New("reached the root namespace's loopback")
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	// Teardown removes every namespace.
	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	if left, _ := namespaces(Prefix + lab.Name() + "-"); len(left) > 0 {
		t.Errorf("namespaces left after Close: %v", left)
	}
}

// TestKinds proves each NAT kind's RFC 4787 behaviour with raw UDP probes:
// mapping (one inside socket to three destinations: same or different
// public port, and in which order ports are given out) and filtering
// (which of the three server sockets reach the mapping the first one
// opened).
func TestKinds(t *testing.T) {
	// Mostly waiting for datagrams that do not come: run every kind at
	// once rather than -parallel (GOMAXPROCS) at a time.
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, kind := range Kinds {
		wg.Go(func() {
			t.Run(kind.String(), func(t *testing.T) {
				w := newWorld(t, kind)
				c := listen(t, w.client, netip.AddrPort{})
				local := netip.AddrPortFrom(w.client.Addr(), c.LocalAddr().(*net.UDPAddr).AddrPort().Port())
				testTCP(t, w) // every kind passes TCP (TURN and STUN over TCP/TLS rely on it)

				if kind == BlockUDP {
					if m, err := mapped(t, c, w.s11.addr); err == nil {
						t.Fatalf("UDP got through the firewall (mapped %s)", m)
					}
					return
				}

				// Mapping.
				var maps []netip.AddrPort
				for _, to := range []netip.AddrPort{w.s11.addr, w.s21.addr, w.s12.addr} {
					m, err := mapped(t, c, to)
					if err != nil {
						t.Fatal(err)
					}
					maps = append(maps, m)
				}
				t.Logf("local %s mapped %v", local, maps)
				for _, m := range maps {
					if !kind.Translates() && m != local {
						t.Errorf("router translated %s to %s", local, m)
					}
					if kind.Translates() && m.Addr() != w.nat.Addr() {
						t.Errorf("mapped address %s, want the NAT's %s", m.Addr(), w.nat.Addr())
					}
					if kind.Translates() && (m.Port() < natPortMin || m.Port() > natPortMax) {
						t.Errorf("mapped port %d outside %d-%d", m.Port(), natPortMin, natPortMax)
					}
				}
				switch kind.Mapping() {
				case EndpointIndependent:
					if maps[0] != maps[1] || maps[0] != maps[2] {
						t.Errorf("endpoint-independent mapping changed: %v", maps)
					}
				case AddressDependent: // to s11, s21, s12
					if maps[0] != maps[2] || maps[0] == maps[1] {
						t.Errorf("address-dependent mapping: %v", maps)
					}
				case AddressAndPortDependent:
					if maps[0] == maps[1] || maps[0] == maps[2] || maps[1] == maps[2] {
						t.Errorf("address-and-port-dependent mapping reused a port: %v", maps)
					}
					seq := maps[1].Port() == maps[0].Port()+1 && maps[2].Port() == maps[1].Port()+1
					if kind == SymmetricSequential && !seq {
						t.Errorf("ports not handed out in sequence: %v", maps)
					}
					if kind == SymmetricRandom && seq {
						t.Errorf("random ports came out in sequence: %v", maps)
					}
				}

				// Filtering: a fresh socket opens a mapping towards s11
				// only; then each server socket sends to it.
				f := listen(t, w.client, netip.AddrPort{})
				m, err := mapped(t, f, w.s11.addr)
				if err != nil {
					t.Fatal(err)
				}
				got := reached(t, f, m, map[string]*echo{"s11": w.s11, "s12": w.s12, "s21": w.s21})
				want := map[Behavior][]string{
					EndpointIndependent:     {"s11", "s12", "s21"},
					AddressDependent:        {"s11", "s12"},
					AddressAndPortDependent: {"s11"},
				}[kind.Filtering()]
				if !slices.Equal(got, want) {
					t.Errorf("filtering: %v reached the mapping, want %v", got, want)
				}
			})
		})
	}
}

// TestHairpin: with Hairpin, a datagram from one inside host to another's
// public mapping arrives, from the sender's public mapping (RFC 4787
// REQ-9); without it, nothing arrives.
func TestHairpin(t *testing.T) {
	for _, hairpin := range []bool{true, false} {
		t.Run(fmt.Sprint("hairpin=", hairpin), func(t *testing.T) {
			lab := New(t)
			server := lab.Host("server", lab.Internet())
			var opts []NATOption
			if hairpin {
				opts = append(opts, Hairpin())
			}
			n := lab.NAT("nat", lab.Internet(), EIMAPDF, opts...)
			s := newEcho(t, server, netip.AddrPortFrom(server.Addr(), 3478))
			var conns []*net.UDPConn
			var maps []netip.AddrPort
			for _, name := range []string{"c1", "c2"} {
				c := listen(t, lab.Host(name, n), netip.AddrPort{})
				m, err := mapped(t, c, s.addr)
				if err != nil {
					t.Fatal(err)
				}
				conns, maps = append(conns, c), append(maps, m)
			}
			// c2 opens its filter towards c1's mapping (this first
			// datagram hairpins too), then c1 answers.
			_, _ = conns[1].WriteToUDPAddrPort([]byte("open"), maps[0])
			got := reached(t, conns[1], maps[1], map[string]*echo{"c1": {conn: conns[0], addr: maps[0]}})
			if want := hairpin; (len(got) == 1) != want {
				t.Errorf("hairpinned datagrams from %v, want hairpinning %v", got, want)
			}
		})
	}
}

// reached sends a datagram naming each sender from it to m, and lists
// (sorted) the senders whose datagram c received within a second (slack
// for a loaded machine; the lab itself answers in microseconds).
func reached(t *testing.T, c *net.UDPConn, m netip.AddrPort, from map[string]*echo) []string {
	t.Helper()
	for name, e := range from {
		for range 2 {
			if _, err := e.conn.WriteToUDPAddrPort([]byte(name), m); err != nil {
				t.Fatal(err)
			}
		}
	}
	seen := map[string]bool{}
	buf := make([]byte, 1500)
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	for {
		n, src, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		if e, ok := from[string(buf[:n])]; ok && e.addr == src {
			seen[string(buf[:n])] = true
		}
	}
	var out []string
	for name := range seen {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// testTCP checks a TCP connection crosses the NAT, translated to its
// address (a router's client keeps its own).
func testTCP(t *testing.T, w *world) {
	t.Helper()
	ln, err := w.server.Listen("tcp4", netip.AddrPortFrom(w.server.Addr(), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err.Error()
			return
		}
		done <- c.RemoteAddr().String()
		c.Close()
	}()
	c, err := w.client.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatalf("TCP through %s: %v", w.nat.Kind(), err)
	}
	c.Close()
	want := w.nat.Addr()
	if !w.nat.Kind().Translates() {
		want = w.client.Addr()
	}
	if got := <-done; !strings.HasPrefix(got, want.String()+":") {
		t.Errorf("server saw TCP from %s, want %s", got, want)
	}
}

// TestDoubleNAT: a client behind an EIM-EIF home NAT behind an EIM-ADF
// carrier NAT sees the outer NAT's address, endpoint-independent mapping
// and the stricter (address-dependent) filtering.
func TestDoubleNAT(t *testing.T) {
	lab := New(t)
	server := lab.Host("server", lab.Internet(), Addrs(2))
	cgn := lab.NAT("cgn", lab.Internet(), EIMADF)
	home := lab.NAT("home", cgn, EIMEIF)
	client := lab.Host("client", home)
	if got := home.Addr(); !cgn.LAN().Contains(got) {
		t.Fatalf("home NAT's outside %s not in the carrier's LAN %s", got, cgn.LAN())
	}
	a := server.Addrs()
	s11 := newEcho(t, server, netip.AddrPortFrom(a[0], 3478))
	s12 := newEcho(t, server, netip.AddrPortFrom(a[0], 3479))
	s21 := newEcho(t, server, netip.AddrPortFrom(a[1], 3478))
	c := listen(t, client, netip.AddrPort{})
	m1, err := mapped(t, c, s11.addr)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := mapped(t, c, s21.addr)
	if err != nil {
		t.Fatal(err)
	}
	if m1 != m2 || m1.Addr() != cgn.Addr() {
		t.Errorf("mapped %s then %s, want one mapping on %s", m1, m2, cgn.Addr())
	}
	f := listen(t, client, netip.AddrPort{})
	m, err := mapped(t, f, s11.addr)
	if err != nil {
		t.Fatal(err)
	}
	got := reached(t, f, m, map[string]*echo{"s11": s11, "s12": s12, "s21": s21})
	if want := []string{"s11", "s12"}; !slices.Equal(got, want) {
		t.Errorf("filtering: %v reached the mapping, want %v", got, want)
	}
}

// hostPair builds a lab with two hosts on its internet, "server" and
// "client", and a UDP socket on each: the server's at srvPort (0: any),
// the client's at 5000. The sockets close when the test ends.
func hostPair(t *testing.T, srvPort uint16) (client *Host, srv, cl *net.UDPConn) {
	t.Helper()
	lab := New(t)
	server := lab.Host("server", lab.Internet())
	client = lab.Host("client", lab.Internet())
	bind := netip.AddrPort{}
	if srvPort != 0 {
		bind = netip.AddrPortFrom(server.Addr(), srvPort)
	}
	return client, listen(t, server, bind), listen(t, client, netip.AddrPortFrom(client.Addr(), 5000))
}

// TestLoss: a link dropping 50% loses roughly half of 200 datagrams each
// way, and nothing once the loss is removed.
func TestLoss(t *testing.T) {
	client, srv, cl := hostPair(t, 5000)
	// Counting reads after all sends: room for 200 datagrams queued.
	_ = srv.SetReadBuffer(1 << 20)
	_ = cl.SetReadBuffer(1 << 20)
	count := func(from, to *net.UDPConn, n int) int {
		dst := to.LocalAddr().(*net.UDPAddr).AddrPort()
		for i := range n {
			if _, err := from.WriteToUDPAddrPort([]byte("x"), dst); err != nil {
				t.Fatal(err)
			}
			if i%50 == 49 {
				time.Sleep(time.Millisecond) // stay far below any queue limit
			}
		}
		got := 0
		buf := make([]byte, 64)
		for got < n {
			_ = to.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if _, _, err := to.ReadFromUDPAddrPort(buf); err != nil {
				break
			}
			got++
		}
		return got
	}
	if got := count(cl, srv, 200); got != 200 {
		t.Fatalf("lossless link delivered %d of 200", got)
	}
	for _, tc := range []struct {
		dir      Direction
		from, to *net.UDPConn
	}{{Uplink, cl, srv}, {Downlink, srv, cl}} {
		if err := client.Link().SetLossDir(tc.dir, 50); err != nil {
			t.Fatal(err)
		}
		// Binomial(200, 0.5): sd 7; 60-140 is more than 5 sd.
		if got := count(tc.from, tc.to, 200); got < 60 || got > 140 {
			t.Errorf("direction %d at 50%% loss delivered %d of 200", tc.dir, got)
		} else {
			t.Logf("direction %d at 50%% loss delivered %d of 200", tc.dir, got)
		}
		if err := client.Link().SetLoss(0); err != nil {
			t.Fatal(err)
		}
	}
	if got := count(srv, cl, 200); got != 200 {
		t.Errorf("after removing the loss the link delivered %d of 200", got)
	}
}

// TestRate: a 2 Mbit/s downlink offered far more delivers about 2 Mbit/s.
func TestRate(t *testing.T) {
	client, srv, cl := hostPair(t, 0)
	if err := client.Link().SetRateDir(Downlink, 2_000_000); err != nil {
		t.Fatal(err)
	}
	// Offer about 12 Mbit/s (20 x 400 B every 5 ms) for 800 ms: even a
	// sender slowed down 5 times by a loaded machine exceeds the cap.
	done := make(chan struct{})
	go func() {
		defer close(done)
		pkt := make([]byte, 400)
		dst := cl.LocalAddr().(*net.UDPAddr).AddrPort()
		for end := time.Now().Add(800 * time.Millisecond); time.Now().Before(end); {
			for range 20 {
				_, _ = srv.WriteToUDPAddrPort(pkt, dst)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	defer func() { <-done }()
	var first, last time.Time
	bytes, buf := 0, make([]byte, 1500)
	for {
		_ = cl.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, _, err := cl.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		if first.IsZero() {
			first = time.Now()
		} else {
			bytes += n // what arrived after the first datagram, over the time since
		}
		last = time.Now()
	}
	el := last.Sub(first)
	if el < 400*time.Millisecond {
		t.Fatalf("received for only %v", el)
	}
	rate := float64(bytes*8) / el.Seconds()
	t.Logf("received %d bytes in %v: %.2f Mbit/s", bytes, el, rate/1e6)
	if rate > 3e6 || rate < 1e6 {
		t.Errorf("rate %.2f Mbit/s through a 2 Mbit/s link", rate/1e6)
	}
	if err := client.Link().SetRate(0); err != nil {
		t.Fatal(err)
	}
}

func TestCommand(t *testing.T) {
	lab := New(t)
	h := lab.Host("h", lab.Internet())
	out, err := h.Command("cat", "/proc/net/dev").Output()
	if err != nil {
		t.Fatal(err)
	}
	// /proc/net follows the reader's namespace: lo and eth0 only.
	if s := string(out); !strings.Contains(s, "eth0:") || strings.Contains(s, "br0:") {
		t.Errorf("command did not run in the host's namespace:\n%s", s)
	}
}

// TestReapOrphans: a lab left by a test process that died is removed by
// the next New; a live process's lab is not.
func TestReapOrphans(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("netlab needs root")
	}
	p := exec.Command("true")
	if err := p.Run(); err != nil {
		t.Fatal(err)
	}
	orphan, err := Open(fmt.Sprintf("p%dx0001", p.Process.Pid)) // that process is gone
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = orphan.Close() })
	live := New(t)
	if left, _ := namespaces(Prefix + orphan.Name() + "-"); len(left) > 0 {
		t.Errorf("orphaned lab %s not removed: %v", orphan.Name(), left)
	}
	if left, _ := namespaces(Prefix + live.Name() + "-"); len(left) == 0 {
		t.Errorf("live lab %s removed", live.Name())
	}
}
