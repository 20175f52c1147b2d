package netlab

import (
	"net/netip"
	"testing"
)

// TestBlockUDP blocks UDP between a host and one server address: that
// address stops answering, the other still does, and unblocking restores it.
func TestBlockUDP(t *testing.T) {
	w := newWorld(t, EIMEIF)
	a := w.server.Addrs()
	c, err := w.client.ListenUDP(netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := w.client.BlockUDP(a[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := mapped(t, c, w.s11.addr); err == nil {
		t.Fatal("blocked address answered")
	}
	if _, err := mapped(t, c, w.s21.addr); err != nil {
		t.Fatalf("other address: %v", err)
	}
	if err := w.client.UnblockUDP(); err != nil {
		t.Fatal(err)
	}
	if _, err := mapped(t, c, w.s11.addr); err != nil {
		t.Fatalf("after unblocking: %v", err)
	}
	if err := w.client.BlockUDP(netip.MustParseAddr("2001:db8::1")); err == nil {
		t.Fatal("IPv6 block accepted")
	}
}

// TestLoseUDP: all loss (100 %) to one server address silences it and
// leaves the other; 0 removes the rule; out-of-range rates are refused.
func TestLoseUDP(t *testing.T) {
	w := newWorld(t, EIMEIF)
	a := w.server.Addrs()
	c, err := w.client.ListenUDP(netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := w.client.LoseUDP(a[0], 100); err != nil {
		t.Fatal(err)
	}
	if _, err := mapped(t, c, w.s11.addr); err == nil {
		t.Fatal("an address losing 100 % answered")
	}
	if _, err := mapped(t, c, w.s21.addr); err != nil {
		t.Fatalf("other address: %v", err)
	}
	if err := w.client.LoseUDP(a[0], 0); err != nil {
		t.Fatal(err)
	}
	if _, err := mapped(t, c, w.s11.addr); err != nil {
		t.Fatalf("after removing the loss: %v", err)
	}
	for _, pct := range []float64{-1, 101} {
		if err := w.client.LoseUDP(a[0], pct); err == nil {
			t.Errorf("loss %v %% accepted", pct)
		}
	}
}
