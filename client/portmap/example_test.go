package portmap_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/traverse-rtc/traverse/client/portmap"
	"github.com/traverse-rtc/traverse/client/portmap/portmaptest"
)

// A host asks its router to forward a public port to its local UDP port
// 5000, and offers the mapping to its peer as one more candidate. Here the
// router is portmaptest's in-process PCP/NAT-PMP gateway; on a real network
// leave Gateway, Local and PMPPort zero (the default route's next hop, the
// kernel's source address, port 5351).
func Example() {
	router, err := portmaptest.New(portmaptest.Config{External: netip.MustParseAddr("192.0.2.1")})
	if err != nil {
		log.Fatal(err)
	}
	defer router.Close()

	c, err := portmap.New(portmap.Config{
		Gateway: router.Addr().Addr(),
		Local:   router.Addr().Addr(),
		PMPPort: router.Addr().Port(),
		// Only PCP and NAT-PMP: the test router does not do UPnP.
		Protocols: []portmap.Protocol{portmap.PCP, portmap.PMP},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close() // deletes the mappings still held

	m, err := c.Map(context.Background(), 5000)
	if err != nil {
		log.Fatal(err) // wraps portmap.ErrUnavailable: no router offers a mapping
	}
	fmt.Printf("%v: local port %d reachable at %v for %v\n", m.Protocol(), m.InternalPort(), m.External(), m.Lifetime())
	// Output: pcp: local port 5000 reachable at 192.0.2.1:5000 for 2h0m0s
}
