package netlab_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/traverse-rtc/traverse/client/nat"
	"github.com/traverse-rtc/traverse/internal/netlab"
	tstun "github.com/traverse-rtc/traverse/internal/stun"
	"github.com/traverse-rtc/traverse/internal/stun/stuntest"
)

// TestNatcheck is the must-show: the RFC 5780 client (package
// client/nat, what "traverse natcheck" runs), from a host behind each NAT
// of the lab, against the traverse RFC 5780 server on a host with two
// addresses on the lab's internet, reports that NAT's true mapping and
// filtering behaviour.
func TestNatcheck(t *testing.T) {
	type want struct {
		nat                bool
		mapping, filtering nat.Behavior
		hairpin            bool
	}
	eim, ad, apd := nat.EndpointIndependent, nat.AddressDependent, nat.AddressAndPortDependent
	cases := []struct {
		name    string
		kinds   []netlab.Kind // outermost first
		want    want
		hairpin bool          // the NATs hairpin
		timeout time.Duration // the NATs' mapping timeout; also asks natcheck for the binding lifetime
	}{
		{"routed", []netlab.Kind{netlab.Routed}, want{false, eim, eim, true}, false, 0},
		{"eim-eif", []netlab.Kind{netlab.EIMEIF}, want{true, eim, eim, false}, false, 0},
		{"eim-adf", []netlab.Kind{netlab.EIMADF}, want{true, eim, ad, false}, false, 0},
		{"eim-apdf", []netlab.Kind{netlab.EIMAPDF}, want{true, eim, apd, false}, false, 0},
		{"eim-apdf-hairpin", []netlab.Kind{netlab.EIMAPDF}, want{true, eim, apd, true}, true, 0},
		{"eim-eif-hairpin", []netlab.Kind{netlab.EIMEIF}, want{true, eim, eim, true}, true, 0},
		{"adm-apdf", []netlab.Kind{netlab.ADMAPDF}, want{true, ad, apd, false}, false, 0},
		{"symmetric-seq", []netlab.Kind{netlab.SymmetricSequential}, want{true, apd, apd, false}, false, 0},
		{"symmetric-random", []netlab.Kind{netlab.SymmetricRandom}, want{true, apd, apd, false}, false, 0},
		// Two levels: a full-cone home NAT behind an address-restricted
		// carrier NAT filters like the carrier.
		{"double-eif-in-adf", []netlab.Kind{netlab.EIMADF, netlab.EIMEIF}, want{true, eim, ad, false}, false, 0},
		// A symmetric home NAT behind a full-cone carrier NAT maps
		// like the home NAT.
		{"double-sym-in-eif", []netlab.Kind{netlab.EIMEIF, netlab.SymmetricRandom}, want{true, apd, apd, false}, false, 0},
		{"block-udp", []netlab.Kind{netlab.BlockUDP}, want{}, false, 0},
		// RFC 5780 section 4.6: the binding lifetime estimate brackets
		// the NAT's mapping timeout.
		// (A hairpinning full cone: no test waits out a filtered answer.)
		{"eim-eif-lifetime", []netlab.Kind{netlab.EIMEIF}, want{true, eim, eim, true}, true, 2 * time.Second},
	}
	// The cases mostly wait for answers that filtering NATs drop: run
	// them all at once rather than -parallel (GOMAXPROCS) at a time.
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, tc := range cases {
		wg.Go(func() {
			t.Run(tc.name, func(t *testing.T) {
				lab := netlab.New(t)
				srv := startSTUN(t, lab)
				var on netlab.Network = lab.Internet()
				var outer *netlab.NAT
				for i, k := range tc.kinds {
					var opts []netlab.NATOption
					if tc.hairpin {
						opts = append(opts, netlab.Hairpin())
					}
					if tc.timeout > 0 {
						opts = append(opts, netlab.MappingTimeout(tc.timeout))
					}
					n := lab.NAT(fmt.Sprintf("nat%d", i), on, k, opts...)
					if outer == nil {
						outer = n
					}
					on = n
				}
				client := lab.Host("client", on)

				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				var rep nat.Report
				err := client.Do(func() error {
					var err error
					// The lab loses nothing: short retransmission
					// budgets keep the filtered tests quick.
					rep, err = nat.Discover(ctx, nat.Config{
						Server: srv.Addr().String(), RTO: 100 * time.Millisecond, Attempts: 4,
						Lifetime: tc.timeout > 0, LifetimeMax: 2 * tc.timeout,
					})
					return err
				})
				if tc.kinds[0] == netlab.BlockUDP {
					if !errors.Is(err, nat.ErrUDPBlocked) || !errors.Is(err, nat.ErrUnreachable) || !rep.UDPBlocked {
						t.Fatalf("natcheck through a UDP-blocking firewall: %v (udp_blocked %v), want %v", err, rep.UDPBlocked, nat.ErrUDPBlocked)
					}
					t.Logf("natcheck: %v", err)
					// The server is reachable; only UDP is blocked.
					bindingOverTCP(t, client, srv.TCPAddr())
					return
				}
				if err != nil {
					t.Fatalf("natcheck: %v", err)
				}
				t.Logf("natcheck behind %v:\n%s", tc.kinds, rep)
				got := want{rep.NAT, rep.Mapping, rep.Filtering, rep.Hairpinning}
				if got != tc.want {
					t.Errorf("natcheck reported %+v, want %+v", got, tc.want)
				}
				if lo, hi := time.Duration(rep.BindingLifetime), time.Duration(rep.BindingLifetimeMax); tc.timeout > 0 && (lo > tc.timeout || hi < tc.timeout) {
					t.Errorf("binding lifetime between %v and %v, but the NAT's mapping timeout is %v", lo, hi, tc.timeout)
				}
				// The public address is the outermost NAT's.
				if tc.want.nat && rep.PublicAddr.Addr() != outer.Addr() {
					t.Errorf("public address %s, want the outer NAT's %s", rep.PublicAddr, outer.Addr())
				}
			})
		})
	}
}

// startSTUN runs the traverse RFC 5780 server in a host "stun" with two
// addresses on the lab's internet.
func startSTUN(t *testing.T, lab *netlab.Lab) *tstun.Server {
	t.Helper()
	h := lab.Host("stun", lab.Internet(), netlab.Addrs(2))
	a := h.Addrs()
	var srv *tstun.Server
	err := h.Do(func() error {
		srv = stuntest.Start(t, tstun.Config{
			Listen:       netip.AddrPortFrom(a[0], 3478),
			OtherAddress: a[1],
			Readers:      1,
		}, nil)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// bindingOverTCP asks the server for the client's mapped address over TCP.
func bindingOverTCP(t *testing.T, h *netlab.Host, server netip.AddrPort) {
	t.Helper()
	c, err := h.Dial("tcp4", server.String())
	if err != nil {
		t.Fatalf("TCP to the STUN server: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if _, err := c.Write(req.Raw); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("STUN over TCP: %v", err)
	}
	res := &stun.Message{Raw: buf[:n]}
	var xa stun.XORMappedAddress
	if err := res.Decode(); err != nil {
		t.Fatal(err)
	}
	if err := xa.GetFrom(res); err != nil {
		t.Fatal(err)
	}
	t.Logf("STUN over TCP works: mapped %s", xa)
}
