package main

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"

	"github.com/traverse-rtc/traverse/internal/netlab"
)

// labHosts maps an address inside a lab's network namespace to its node
// (netip.Addr -> *netlab.Node), so that testHTTP reaches the processes a
// lab test runs there from this process's namespace.
var labHosts sync.Map

// testHTTP is the tests' HTTP client (httpGet, routeOf, the lab's
// signalers and browser): a TCP connection to an address of labHosts is
// opened inside that node's namespace, any other as usual.
var testHTTP = &http.Client{Transport: &http.Transport{DialContext: nsDial, DisableKeepAlives: true}}

func nsDial(ctx context.Context, network, addr string) (net.Conn, error) {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		if n, ok := labHosts.Load(ap.Addr()); ok {
			return n.(*netlab.Node).Dial(network, addr)
		}
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// reachLab makes testHTTP reach each node's address (until the test ends).
func reachLab(t *testing.T, nodes ...*netlab.Node) {
	for _, n := range nodes {
		labHosts.Store(n.Addr(), n)
		t.Cleanup(func() { labHosts.Delete(n.Addr()) })
	}
}
