package persource

import (
	"net/netip"
	"testing"
	"time"
)

func TestKey(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"192.0.2.1", "192.0.2.1/32"},
		{"::ffff:192.0.2.1", "192.0.2.1/32"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"},
		{"fe80::1%eth0", "fe80::/64"},
		{"::1", "::/64"},
	} {
		if got := Key(netip.MustParseAddr(tc.in)); got.String() != tc.want {
			t.Errorf("Key(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
	if got := Key(netip.Addr{}); got != (netip.Prefix{}) {
		t.Errorf("Key(invalid) = %v", got)
	}
}

func TestCounts(t *testing.T) {
	var c Counts
	a, b := Key(netip.MustParseAddr("2001:db8::1")), Key(netip.MustParseAddr("192.0.2.1"))
	for i := range 3 {
		if !c.Take(a, 1, 3) {
			t.Fatalf("take %d of 3 refused", i)
		}
	}
	if c.Take(a, 1, 3) || c.Get(a) != 3 {
		t.Fatalf("fourth take allowed, or counted: %d", c.Get(a))
	}
	if !c.Take(b, 5, 0) || c.Get(b) != 5 {
		t.Fatal("no cap: refused")
	}
	if c.Take(b, 2, 6) || c.Get(b) != 5 {
		t.Fatal("a take of 2 past the cap counted")
	}
	c.Give(a, 3)
	c.Give(b, 5)
	if c.Len() != 0 {
		t.Fatalf("%d sources left after giving all back", c.Len())
	}
}

func TestRate(t *testing.T) {
	l := NewRate(10, 5) // a token per 100 ms, five at once
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("192.0.2.2")
	now := int64(time.Hour)
	for i := range 5 {
		if !l.AllowAt(a, now) {
			t.Fatalf("request %d of the burst refused", i)
		}
	}
	if l.AllowAt(a, now) {
		t.Fatal("sixth request at once allowed")
	}
	if !l.AllowAt(b, now) {
		t.Fatal("another source refused")
	}
	if l.AllowAt(a, now+int64(99*time.Millisecond)) {
		t.Fatal("allowed before a token came back")
	}
	if !l.AllowAt(a, now+int64(100*time.Millisecond)) {
		t.Fatal("refused after a token came back")
	}
	// A long silence refills the bucket to burst, not beyond.
	later := now + int64(time.Minute)
	n := 0
	for l.AllowAt(a, later) {
		n++
	}
	if n != 5 {
		t.Errorf("%d allowed after a silence, want 5", n)
	}
}

// Fractional rates (SIP's new calls per second) and no limit.
func TestRateFractionalAndNil(t *testing.T) {
	l := NewRate(0.5, 1) // a token per 2 s
	a := netip.MustParseAddr("192.0.2.1")
	now := int64(time.Hour)
	if !l.AllowAt(a, now) || l.AllowAt(a, now+int64(1999*time.Millisecond)) || !l.AllowAt(a, now+int64(2*time.Second)) {
		t.Error("0.5/s is not a token every 2 s")
	}
	var none *Rate
	if NewRate(0, 10) != nil || !none.Allow(a) || !none.AllowAt(a, 0) {
		t.Error("a rate of 0 limits")
	}
}

// One IPv6 host holds a /64: its addresses share a bucket; IPv4-mapped
// addresses are their IPv4 address.
func TestRateKeys(t *testing.T) {
	l := NewRate(1, 1)
	now := int64(time.Hour)
	if !l.AllowAt(netip.MustParseAddr("2001:db8:1:2::1"), now) || l.AllowAt(netip.MustParseAddr("2001:db8:1:2:ffff::9"), now) {
		t.Error("addresses of one /64 do not share a bucket")
	}
	if !l.AllowAt(netip.MustParseAddr("2001:db8:1:3::1"), now) {
		t.Error("another /64 limited")
	}
	if !l.AllowAt(netip.MustParseAddr("198.51.100.4"), now) || l.AllowAt(netip.MustParseAddr("::ffff:198.51.100.4"), now) {
		t.Error("an IPv4-mapped address has a bucket of its own")
	}
}

// TestRateSpoofedFlood: events from 10,000 sources (as a spoofed flood
// makes) allocate nothing, so the table cannot grow; a quiet source is
// still allowed meanwhile unless its bucket collides with a flooded one
// (about 14 % of them).
func TestRateSpoofedFlood(t *testing.T) {
	l := NewRate(1, 1)
	now := l.Now()
	i := 0
	if n := testing.AllocsPerRun(10_000, func() {
		l.AllowAt(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), now)
		i++
	}); n != 0 {
		t.Fatalf("%v allocations per new source", n)
	}
	if len(l.slots) != Slots {
		t.Fatalf("table of %d slots, want %d", len(l.slots), Slots)
	}
	ok := 0
	for j := range 100 {
		if l.AllowAt(netip.AddrFrom4([4]byte{192, 0, 2, byte(j)}), now) {
			ok++
		}
	}
	if ok < 70 {
		t.Fatalf("only %d of 100 quiet sources allowed during the flood", ok)
	}
}

func TestRateAllocs(t *testing.T) {
	l := NewRate(100, 200)
	a := netip.MustParseAddr("2001:db8::1")
	if n := testing.AllocsPerRun(1000, func() { l.AllowAt(a, l.Now()) }); n != 0 {
		t.Errorf("%v allocations per check", n)
	}
}

func BenchmarkRate(b *testing.B) {
	l := NewRate(1_000_000_000, 1)
	a := netip.MustParseAddr("192.0.2.1")
	b.ReportAllocs()
	for b.Loop() {
		l.Allow(a)
	}
}
