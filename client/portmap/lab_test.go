package portmap_test

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/client/portmap"
	"github.com/traverse-rtc/traverse/internal/netlab"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// startMiniupnpd runs Debian's miniupnpd on nat (netlab.StartMiniupnpd)
// until the test ends; its log is printed when the test fails.
func startMiniupnpd(t *testing.T, nat *netlab.NAT) {
	t.Helper()
	d, err := nat.StartMiniupnpd(labPublic)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = d.Close()
		if t.Failed() {
			t.Logf("miniupnpd log:\n%s", d.Log())
		}
	})
}

// labPublic is the address miniupnpd maps on (see netlab.MiniupnpdPublic).
var labPublic = netlab.MiniupnpdPublic

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
	startMiniupnpd(t, nat)

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
