package main

import (
	"net/netip"
	"strings"
	"testing"
)

// TestSipgwParse: the section's strings become typed configurations once,
// in the command, and a bad value names its flag.
func TestSipgwParse(t *testing.T) {
	good := sipgwConfig{SIP: ":5060", SIPTLS: "", RTP: "127.0.0.1:7000", RTCP: "127.0.0.1:7001",
		Upstream: "localhost:5080", InsideIP: "10.0.0.1", InsidePorts: "30000-30099",
		InsideNets: []string{"10.1.0.0/16"}, AllowMedia: []string{"192.168.0.0/16"}, DenyMedia: []string{"198.51.100.0/24"}}
	m, g, err := good.parse()
	if err != nil {
		t.Fatal(err)
	}
	if g.SIP != netip.MustParseAddrPort("0.0.0.0:5060") || g.TLS.IsValid() || g.Upstream != netip.MustParseAddrPort("127.0.0.1:5080") {
		t.Errorf("sip %v, tls %v, upstream %v", g.SIP, g.TLS, g.Upstream)
	}
	if m.RTP.Port() != 7000 || m.RTCP.Port() != 7001 || m.InsidePorts.Low != 30000 || len(g.InsideNets) != 1 ||
		len(m.Policy.Allow) != 1 || len(m.Policy.Deny) != 1 {
		t.Errorf("media %+v, gateway %+v", m, g)
	}
	for _, tc := range []struct {
		flag string
		mod  func(*sipgwConfig)
	}{
		{"--rtp", func(c *sipgwConfig) { c.RTP = "127.0.0.1" }},
		{"--sip-tls", func(c *sipgwConfig) { c.SIPTLS = "nowhere.invalid:5061" }},
		{"--inside-ip", func(c *sipgwConfig) { c.InsideIP = "10.0.0" }},
		{"--inside-net", func(c *sipgwConfig) { c.InsideNets = []string{"10.1.0.0"} }},
		{"--deny-media", func(c *sipgwConfig) { c.DenyMedia = []string{"x"} }},
		{"--upstream", func(c *sipgwConfig) { c.Upstream = "" }},
		{"--sip", func(c *sipgwConfig) { c.SIP = "" }},
	} {
		c := good
		tc.mod(&c)
		if _, _, err := c.parse(); err == nil || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("%s: %v", tc.flag, err)
		}
	}
}
