package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/traverse-rtc/traverse/client/portmap"
)

// portmapFlags are natcheck's port-mapping flags.
type portmapFlags struct {
	Portmap  bool          `yaml:"portmap"`
	Gateway  string        `yaml:"gateway"`
	Timeout  time.Duration `yaml:"portmap-timeout"`
	pmpPort  uint          // tests only
	ssdpPort uint
}

// portmapOffer is the JSON form of a portmap.Offer.
type portmapOffer struct {
	Gateway      netip.Addr        `json:"gateway"`
	Local        netip.Addr        `json:"local"`
	PCP          bool              `json:"pcp"`
	PMP          bool              `json:"nat_pmp"`
	PMPExternal  netip.Addr        `json:"nat_pmp_external,omitzero"`
	UPnP         bool              `json:"upnp"`
	UPnPLocation string            `json:"upnp_location,omitempty"`
	UPnPService  string            `json:"upnp_service,omitempty"`
	Errors       map[string]string `json:"errors,omitempty"`
}

// portmapCheck probes the gateway for PCP, NAT-PMP and UPnP IGD and
// prints what it offered.
func portmapCheck(ctx context.Context, w io.Writer, f portmapFlags, asJSON bool) error {
	cfg := portmap.Config{Timeout: f.Timeout, PMPPort: uint16(f.pmpPort), SSDPPort: uint16(f.ssdpPort)}
	if f.Gateway != "" {
		gw, err := netip.ParseAddr(f.Gateway)
		if err != nil {
			return fmt.Errorf("--gateway: %w", err)
		}
		cfg.Gateway = gw
	}
	c, err := portmap.New(cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	o, err := c.Probe(ctx)
	if err != nil {
		return err
	}
	if !asJSON {
		_, err = fmt.Fprintf(w, "port mapping:\n%s", o)
		return err
	}
	j := portmapOffer{Gateway: o.Gateway, Local: o.Local, PCP: o.PCP, PMP: o.PMP, PMPExternal: o.PMPExternal,
		UPnP: o.UPnP, UPnPLocation: o.UPnPLocation, UPnPService: o.UPnPService.Type}
	for p, e := range o.Errors {
		if j.Errors == nil {
			j.Errors = map[string]string{}
		}
		j.Errors[p.String()] = e.Error()
	}
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
