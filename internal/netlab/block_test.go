package netlab

import (
	"net/netip"
	"testing"
)

// TestBlockUDP closes UDP between a host and one server address, by
// BlockUDP and by LoseUDP at 100 %: that address stops answering, the
// other still does, and removing the rule restores it. IPv6 peers and
// out-of-range loss rates are refused.
func TestBlockUDP(t *testing.T) {
	w := newWorld(t, EIMEIF)
	a := w.server.Addrs()
	for _, tc := range []struct {
		name     string
		cut, fix func() error
	}{
		{"BlockUDP", func() error { return w.client.BlockUDP(a[0]) }, w.client.UnblockUDP},
		{"LoseUDP 100 %", func() error { return w.client.LoseUDP(a[0], 100) }, func() error { return w.client.LoseUDP(a[0], 0) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := w.client.ListenUDP(netip.AddrPort{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := tc.cut(); err != nil {
				t.Fatal(err)
			}
			if _, err := mapped(t, c, w.s11.addr); err == nil {
				t.Fatal("cut address answered")
			}
			if _, err := mapped(t, c, w.s21.addr); err != nil {
				t.Fatalf("other address: %v", err)
			}
			if err := tc.fix(); err != nil {
				t.Fatal(err)
			}
			if _, err := mapped(t, c, w.s11.addr); err != nil {
				t.Fatalf("after removing the rule: %v", err)
			}
		})
	}
	v6 := netip.MustParseAddr("2001:db8::1")
	if err := w.client.BlockUDP(v6); err == nil {
		t.Error("IPv6 block accepted")
	}
	if err := w.client.LoseUDP(v6, 10); err == nil {
		t.Error("IPv6 loss accepted")
	}
	for _, pct := range []float64{-1, 101} {
		if err := w.client.LoseUDP(a[0], pct); err == nil {
			t.Errorf("loss %v %% accepted", pct)
		}
	}
}
