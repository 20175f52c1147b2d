package nat_test

import (
	"context"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/client/nat"
	"github.com/traverse-rtc/traverse/internal/netlab"
	"github.com/traverse-rtc/traverse/internal/stun"
	"github.com/traverse-rtc/traverse/internal/stun/stuntest"
)

// The binding lifetime estimate (RFC 5780 section 4.6) finds the UDP
// timeout of a real NAT: a symmetric NAT in the lab whose mappings are
// conntrack entries, with nf_conntrack_udp_timeout set to 3 s.
func TestBindingLifetimeLab(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 10 s")
	}
	lab := netlab.New(t)
	h := lab.Host("stun", lab.Internet(), netlab.Addrs(2))
	a := h.Addrs()
	var srv *stun.Server
	if err := h.Do(func() error {
		srv = stuntest.Start(t, stun.Config{Listen: netip.AddrPortFrom(a[0], 3478), OtherAddress: a[1]}, nil)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	gw := lab.NAT("nat", lab.Internet(), netlab.SymmetricSequential)
	const timeout = 3 * time.Second
	if err := gw.Do(func() error {
		return os.WriteFile("/proc/sys/net/netfilter/nf_conntrack_udp_timeout", []byte("3"), 0o644)
	}); err != nil {
		t.Skipf("cannot set the conntrack UDP timeout: %v", err)
	}
	client := lab.Host("client", gw)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var rep nat.Report
	err := client.Do(func() error {
		var err error
		rep, err = nat.Discover(ctx, nat.Config{Server: srv.Addr().String(), RTO: 50 * time.Millisecond, Attempts: 3,
			Lifetime: true, LifetimeMax: 8 * time.Second})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("behind a symmetric NAT with a %s UDP timeout:\n%s", timeout, rep)
	lo, hi := time.Duration(rep.BindingLifetime), time.Duration(rep.BindingLifetimeMax)
	if lo < timeout-time.Second || hi == 0 || hi > timeout+time.Second || lo >= hi {
		t.Errorf("binding lifetime between %s and %s, want about %s", lo, hi, timeout)
	}
}
