package testkit

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"testing"
)

// FreePorts returns a port P such that P .. P+n-1 are free for both UDP and
// TCP on every address in ips (127.0.0.1 when none is given), for a server
// that must be told its port in advance (coturn, the traverse commands).
//
// It picks below the kernel's ephemeral range (32768 and up on Linux), so
// that the sockets other tests open with port 0, which may be thousands
// while a flood test runs in a parallel package, neither crowd the search
// nor take the port between this check and the server's bind.
func FreePorts(t testing.TB, n int, ips ...netip.Addr) int {
	t.Helper()
	if len(ips) == 0 {
		ips = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	}
	free := func(ap string) bool {
		u, err := net.ListenPacket("udp", ap)
		if err != nil {
			return false
		}
		defer u.Close()
		l, err := net.Listen("tcp", ap)
		if err != nil {
			return false
		}
		return l.Close() == nil
	}
	for range 500 {
		p := 20000 + rand.IntN(12000)
		ok := true
		for _, ip := range ips {
			for q := p; q < p+n && ok; q++ {
				ok = free(net.JoinHostPort(ip.String(), strconv.Itoa(q)))
			}
		}
		if ok {
			return p
		}
	}
	t.Fatalf("no %d free consecutive ports on %v below the ephemeral range", n, ips)
	return 0
}
