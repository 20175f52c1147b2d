package stun

import (
	"net/netip"
	"testing"
	"time"
)

func TestRateLimiter(t *testing.T) {
	l := newRateLimiter(10, 5) // a token per 100 ms, five at once
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("192.0.2.2")
	now := int64(time.Hour)
	for i := range 5 {
		if !l.allow(a, now) {
			t.Fatalf("request %d of the burst refused", i)
		}
	}
	if l.allow(a, now) {
		t.Fatal("sixth request at once allowed")
	}
	if !l.allow(b, now) {
		t.Fatal("another source refused")
	}
	if l.allow(a, now+int64(99*time.Millisecond)) {
		t.Fatal("allowed before a token came back")
	}
	if !l.allow(a, now+int64(100*time.Millisecond)) {
		t.Fatal("refused after a token came back")
	}
	// A long silence refills the bucket to burst, not beyond.
	later := now + int64(time.Minute)
	n := 0
	for l.allow(a, later) {
		n++
	}
	if n != 5 {
		t.Errorf("%d allowed after a silence, want 5", n)
	}
}

// One IPv6 host holds a /64: its addresses share a bucket; IPv4-mapped
// addresses are their IPv4 address.
func TestRateLimiterKeys(t *testing.T) {
	l := newRateLimiter(1, 1)
	now := int64(time.Hour)
	if !l.allow(netip.MustParseAddr("2001:db8:1:2::1"), now) || l.allow(netip.MustParseAddr("2001:db8:1:2:ffff::9"), now) {
		t.Error("addresses of one /64 do not share a bucket")
	}
	if !l.allow(netip.MustParseAddr("2001:db8:1:3::1"), now) {
		t.Error("another /64 limited")
	}
	if !l.allow(netip.MustParseAddr("198.51.100.4"), now) || l.allow(netip.MustParseAddr("::ffff:198.51.100.4"), now) {
		t.Error("an IPv4-mapped address has a bucket of its own")
	}
}

func TestRateLimiterAllocs(t *testing.T) {
	l := newRateLimiter(100, 200)
	a := netip.MustParseAddr("2001:db8::1")
	if n := testing.AllocsPerRun(1000, func() { l.allow(a, l.now()) }); n != 0 {
		t.Errorf("%v allocations per check", n)
	}
}

func BenchmarkRateLimiter(b *testing.B) {
	l := newRateLimiter(1_000_000_000, 1)
	a := netip.MustParseAddr("192.0.2.1")
	b.ReportAllocs()
	for b.Loop() {
		l.allow(a, l.now())
	}
}
