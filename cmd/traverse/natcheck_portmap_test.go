package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/client/portmap/portmaptest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestNatcheckPortmap: "natcheck --portmap" prints what a PCP/NAT-PMP
// gateway offered (and that UPnP did not answer), as text and as JSON.
func TestNatcheckPortmap(t *testing.T) {
	g, err := portmaptest.New(portmaptest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	silent := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	args := []string{"--portmap", "--gateway", "127.0.0.1", "--portmap-timeout", "300ms",
		"--portmap-pmp-port", fmt.Sprint(g.Addr().Port()),
		"--portmap-ssdp-port", fmt.Sprint(netip.MustParseAddrPort(silent.LocalAddr().String()).Port())}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var out bytes.Buffer
	if err := natcheck(ctx, &out, args); err != nil {
		t.Fatalf("natcheck: %v\n%s", err, out.String())
	}
	text := strings.Join(strings.Fields(out.String()), " ")
	for _, want := range []string{"gateway: 127.0.0.1", "pcp: offered", "nat-pmp: offered, external address 192.0.2.1", "upnp-igd: no ("} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}

	out.Reset()
	if err := natcheck(ctx, &out, append(args, "--json")); err != nil {
		t.Fatalf("natcheck --json: %v", err)
	}
	var j portmapOffer
	if err := json.Unmarshal(out.Bytes(), &j); err != nil || !j.PCP || !j.PMP || j.UPnP || j.Errors["upnp-igd"] == "" {
		t.Fatalf("json %s: %+v, %v", out.String(), j, err)
	}
}
