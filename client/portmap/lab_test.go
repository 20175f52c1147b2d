package portmap_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/client/portmap"
	"github.com/traverse-rtc/traverse/internal/netlab"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// labPublic is the home NAT's second outside address, the one miniupnpd
// maps on. miniupnpd refuses to map on the lab's internet addresses
// (203.0.113.0/24 is a documentation block, RFC 6890 reserved), so the
// NAT gets an address outside every reserved block. The lab has no link
// out: nothing sent to it leaves the lab's namespaces.
var labPublic = netip.MustParseAddr("192.0.3.1")

// miniupnpdRules is what Debian's /etc/miniupnpd/nft_init.sh builds (its
// default names: table inet filter, chains miniupnpd,
// prerouting_miniupnpd, postrouting_miniupnpd). The package's scripts
// cannot run as shipped (they source a miniupnpd_functions.sh that
// miniupnpd-nftables 2.3.1 does not install), so the test loads the same
// structure with nft. One change: the forward chain's policy is accept,
// not drop, because the lab NAT's own table (netlab) already filters
// inbound: only established flows and flows miniupnpd's rules dnat'ed pass.
const miniupnpdRules = `table inet filter {
	chain forward {
		type filter hook forward priority 0; policy accept;
		jump miniupnpd
	}
	chain miniupnpd {
	}
	chain prerouting {
		type nat hook prerouting priority -100; policy accept;
		jump prerouting_miniupnpd
	}
	chain postrouting {
		type nat hook postrouting priority 100; policy accept;
		jump postrouting_miniupnpd
	}
	chain prerouting_miniupnpd {
	}
	chain postrouting_miniupnpd {
	}
}
`

// startMiniupnpd runs Debian's miniupnpd in nat's namespace, speaking
// NAT-PMP, PCP and UPnP IGD on the NAT's LAN side (br0), with ext as its
// external address, in secure mode (a client may map only to itself).
func startMiniupnpd(t *testing.T, nat *netlab.NAT, ext netip.Addr) *syncBuffer {
	t.Helper()
	if _, err := exec.LookPath("miniupnpd"); err != nil {
		t.Fatalf("miniupnpd is not installed (scripts/test.sh installs miniupnpd-nftables): %v", err)
	}
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.nft")
	if err := os.WriteFile(rules, []byte(miniupnpdRules), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := nat.Command("nft", "-f", rules).CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s", err, out)
	}
	conf := filepath.Join(dir, "miniupnpd.conf")
	lan := nat.LAN()
	err := os.WriteFile(conf, fmt.Appendf(nil, `ext_ifname=eth0
ext_ip=%v
listening_ip=br0
port=0
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
system_uptime=yes
notify_interval=60
uuid=3e7a6a3c-2f41-4c1b-9d7e-5a0b6c2f9e11
allow 1024-65535 %v 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
`, ext, lan), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := nat.Command("miniupnpd", "-f", conf, "-d", "-P", filepath.Join(dir, "miniupnpd.pid"))
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start miniupnpd: %v", err)
	}
	exited := testkit.Exited(cmd)
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = testkit.AwaitExit(cmd, exited, 5*time.Second)
		if t.Failed() {
			t.Logf("miniupnpd log:\n%s", log.String())
		}
	})
	testkit.WaitFor(t, 5*time.Second, "miniupnpd listening", func() bool {
		s := log.String()
		return strings.Contains(s, "Listening for NAT-PMP/PCP traffic") && strings.Contains(s, "HTTP listening")
	})
	return log
}

type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// dialIn dials from h's namespace.
func dialIn(h *netlab.Host) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := h.Do(func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// receive waits for one datagram on c and returns its payload and source.
func receive(t *testing.T, c *net.UDPConn, what string) (string, netip.AddrPort) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 1500)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return string(buf[:n]), from
}

// TestMiniupnpd maps a port through Debian's miniupnpd with each protocol
// it speaks, from a host behind an address-and-port-dependent filtering
// NAT, and checks that an outside host reaches the inside socket through
// the mapping, and not without it (before the mapping, and after Close
// deleted it).
func TestMiniupnpd(t *testing.T) {
	l := netlab.New(t)
	nat := l.NAT("home", l.Internet(), netlab.EIMAPDF)
	inside := l.Host("inside", nat)
	peer := l.Host("peer", l.Internet())
	other := l.Host("other", l.Internet())
	if err := nat.AddPublicAddr(labPublic); err != nil {
		t.Fatal(err)
	}
	startMiniupnpd(t, nat, labPublic)

	// The gateway as the kernel routes it, read the way Config's default does.
	var gw netip.Addr
	if err := inside.Do(func() error {
		var err error
		gw, err = portmap.DefaultGateway()
		return err
	}); err != nil || gw != inside.Gateway() {
		t.Fatalf("DefaultGateway in the lab = %v, %v; want %v", gw, err, inside.Gateway())
	}

	// One probe of all three protocols at once, as natcheck --portmap
	// runs it (and prints it).
	all, err := portmap.New(portmap.Config{Gateway: inside.Gateway(), ListenUDP: inside.ListenUDP, Dial: dialIn(inside)})
	if err != nil {
		t.Fatal(err)
	}
	offer, err := all.Probe(context.Background())
	if err != nil || !offer.PCP || !offer.PMP || offer.PMPExternal != labPublic || !offer.UPnP ||
		offer.UPnPService.Type != "urn:schemas-upnp-org:service:WANIPConnection:2" {
		t.Fatalf("Probe: %v\n%s", err, offer)
	}
	t.Logf("what natcheck --portmap prints here:\n%s", offer)
	_ = all.Close()

	otherSock, err := other.ListenUDP(netip.AddrPortFrom(other.Addr(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer otherSock.Close()

	for _, proto := range []portmap.Protocol{portmap.PCP, portmap.PMP, portmap.UPnP} {
		t.Run(proto.String(), func(t *testing.T) {
			sock, err := inside.ListenUDP(netip.AddrPortFrom(inside.Addr(), 0))
			if err != nil {
				t.Fatal(err)
			}
			defer sock.Close()
			port := netip.MustParseAddrPort(sock.LocalAddr().String()).Port()
			send := func(to netip.AddrPort, msg string) {
				t.Helper()
				c, err := peer.ListenUDP(netip.AddrPortFrom(peer.Addr(), 0))
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if _, err := c.WriteToUDPAddrPort([]byte(msg), to); err != nil {
					t.Fatal(err)
				}
			}

			// Without a mapping: the NAT's own mapping of the socket
			// (learned by another outside host) filters the peer out,
			// and nothing listens on the mapped address yet.
			if _, err := sock.WriteToUDPAddrPort([]byte("out"), netip.MustParseAddrPort(otherSock.LocalAddr().String())); err != nil {
				t.Fatal(err)
			}
			_, natural := receive(t, otherSock, "other host")
			send(natural, "filtered")
			send(netip.AddrPortFrom(labPublic, port), "unmapped")
			testkit.Silent(t, sock, "inside socket before the mapping")

			c, err := portmap.New(portmap.Config{
				Gateway:   inside.Gateway(),
				Protocols: []portmap.Protocol{proto},
				ListenUDP: inside.ListenUDP,
				Dial:      dialIn(inside),
			})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.Local() != inside.Addr() {
				t.Fatalf("Local = %v, want %v", c.Local(), inside.Addr())
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			offer, err := c.Probe(ctx)
			if err != nil || !offer.Has(proto) {
				t.Fatalf("Probe: %v, %+v", err, offer)
			}

			m, err := c.Map(ctx, port)
			if err != nil {
				t.Fatalf("Map: %v", err)
			}
			ext := m.External()
			t.Logf("%v: %v:%d mapped to %v for %v", proto, inside.Addr(), port, ext, m.Lifetime())
			if ext.Addr() != labPublic || ext.Port() == 0 || m.Lifetime() <= 0 || m.Protocol() != proto {
				t.Fatalf("mapping %v (%v, lifetime %v); want %v:port", ext, m.Protocol(), m.Lifetime(), labPublic)
			}

			// Twice: from a fresh peer socket, and from one the inside
			// socket sent to first (both sides punching at once). In the
			// second case the inside host's own flow to the peer already
			// holds the tuple the mapped flow's answers need, and the
			// kernel's NAT resolves the clash by rewriting the peer's
			// source port: the packet arrives from the peer's address
			// but another port, and answering that address still
			// reaches the peer from ext.
			for _, punchedFirst := range []bool{false, true} {
				peerSock, err := peer.ListenUDP(netip.AddrPortFrom(peer.Addr(), 0))
				if err != nil {
					t.Fatal(err)
				}
				defer peerSock.Close()
				peerAddr := netip.MustParseAddrPort(peerSock.LocalAddr().String())
				if punchedFirst {
					if _, err := sock.WriteToUDPAddrPort([]byte("punch"), peerAddr); err != nil {
						t.Fatal(err)
					}
					if msg, from := receive(t, peerSock, "peer, the inside host's punch"); msg != "punch" || from.Addr() == labPublic {
						t.Fatalf("peer got %q from %v: an outgoing flow left through the mapping", msg, from)
					}
				}
				if _, err := peerSock.WriteToUDPAddrPort([]byte("mapped"), ext); err != nil {
					t.Fatal(err)
				}
				msg, from := receive(t, sock, "inside socket through the mapping")
				if msg != "mapped" || from.Addr() != peer.Addr() || (!punchedFirst && from != peerAddr) {
					t.Fatalf("inside got %q from %v, want \"mapped\" from %v", msg, from, peerAddr)
				}
				// The answer to where the packet came from leaves
				// through the mapping: the peer sees it come from ext.
				if _, err := sock.WriteToUDPAddrPort([]byte("reply"), from); err != nil {
					t.Fatal(err)
				}
				if msg, from := receive(t, peerSock, "peer, the inside host's reply"); msg != "reply" || from != ext {
					t.Fatalf("peer got %q from %v, want \"reply\" from %v", msg, from, ext)
				}
			}

			if err := m.Close(); err != nil {
				t.Fatalf("Close (delete): %v", err)
			}
			send(ext, "deleted") // from a fresh port: no conntrack entry to ride
			testkit.Silent(t, sock, "inside socket after the mapping was deleted")
			if s := c.Stats(); s.Foreign != 0 || s.Malformed != 0 {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}
