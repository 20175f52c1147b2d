package addrpolicy

import (
	"net/netip"
	"testing"
)

func TestFilterDefaults(t *testing.T) {
	f := Filter{Own: []netip.Addr{netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("203.0.113.8")},
		RelayIP: netip.MustParseAddr("203.0.113.8")}
	for _, tc := range []struct {
		ip   string
		want bool
	}{
		{"127.0.0.1", false},
		{"127.1.2.3", false},
		{"0.0.0.0", false},
		{"10.0.0.1", false},
		{"172.16.5.4", false},
		{"192.168.1.1", false},
		{"100.64.0.1", false},
		{"169.254.169.254", false},
		{"224.0.0.1", false},
		{"255.255.255.255", false},
		{"203.0.113.7", false}, // the server's own
		{"203.0.113.8", true},  // the relay IP: relay to relay
		{"::1", false},
		{"::", false},
		{"::ffff:127.0.0.1", false},
		{"::ffff:10.0.0.1", false},
		{"::ffff:169.254.169.254", false},
		{"fe80::1", false},
		{"fc00::1", false},
		{"fd12:3456::1", false},
		{"ff02::1", false},
		{"64:ff9b::a00:1", false},                       // NAT64 of 10.0.0.1
		{"2002:7f00:1::1", false},                       // 6to4 of 127.0.0.1
		{"64:ff9b::7f00:1", false},                      // NAT64 of 127.0.0.1
		{"64:ff9b::a9fe:a9fe", false},                   // NAT64 of 169.254.169.254
		{"64:ff9b::808:808", true},                      // NAT64 of 8.8.8.8
		{"64:ff9b:0:1::808:808", true},                  // not the /96: no IPv4 inside by this rule
		{"2001:0:4136:e378:8000:63bf:80ff:fffe", false}, // Teredo of 127.0.0.1
		{"::7f00:1", false},                             // IPv4-compatible 127.0.0.1
		{"::a00:1", false},                              // IPv4-compatible 10.0.0.1
		{"::a9fe:a9fe", false},                          // IPv4-compatible 169.254.169.254
		{"::cb00:7107", false},                          // IPv4-compatible own 203.0.113.7
		{"::5", false},                                  // IPv4-compatible 0.0.0.5
		{"::808:808", true},                             // IPv4-compatible 8.8.8.8: judged as 8.8.8.8
		{"::ffff:0:7f00:1", false},                      // IPv4-translated 127.0.0.1
		{"::ffff:0:a00:1", false},                       // IPv4-translated 10.0.0.1
		{"::ffff:0:808:808", true},                      // IPv4-translated 8.8.8.8
		{"::ffff:cb00:7107", false},                     // IPv4-mapped own address
		{"8.8.8.8", true},
		{"1.1.1.1", true},
		{"2606:4700::1111", true},
		{"::ffff:8.8.8.8", true},
	} {
		if got := f.AllowedIP(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("AllowedIP(%s) = %v, want %v", tc.ip, got, tc.want)
		}
	}
	// Lists: deny beats allow beats the defaults; loopback is an opt-in.
	f = Filter{
		Allow:    []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("8.8.0.0/16")},
		Deny:     []netip.Prefix{netip.MustParsePrefix("8.8.8.0/24")},
		Loopback: true,
	}
	for _, tc := range []struct {
		ip   string
		want bool
	}{
		{"10.1.2.3", true}, {"10.2.0.1", false}, {"8.8.8.8", false}, {"8.8.4.4", true},
		{"127.0.0.1", true}, {"::1", true}, {"169.254.169.254", false},
	} {
		if got := f.AllowedIP(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("lists: AllowedIP(%s) = %v, want %v", tc.ip, got, tc.want)
		}
	}
}
