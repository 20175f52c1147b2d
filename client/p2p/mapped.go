package p2p

import (
	"context"
	"errors"
	"net/netip"

	"github.com/traverse-rtc/traverse/client/portmap"
)

// Port mapping (client/portmap, docs/p2p-portmap.md): in parallel with
// STUN the home router is asked (PCP, NAT-PMP, UPnP IGD) to forward a
// public port to the direct socket; its external address goes to the peer
// as a "mapped" candidate, probed like a server-reflexive one. Through it
// a peer whose own NAT maps symmetrically reaches this side even behind an
// address-and-port-dependent filter. A router that answers nothing costs
// one portmap timeout (1 s) in the background and delays nothing.

// WithPortMap asks the router named by cfg (zero: the default route's
// gateway, the host's sockets) for a mapping. On by default with the
// host's network; with WithNetwork it is off unless given, since cfg must
// then open its sockets where the Network does.
func WithPortMap(cfg portmap.Config) Option {
	return func(o *options) error { o.portmap, o.portmapSet = &cfg, true; return nil }
}

// WithoutPortMap never asks the router for a mapping.
func WithoutPortMap() Option {
	return func(o *options) error { o.portmap, o.portmapSet = nil, true; return nil }
}

// mapPort asks the router for a mapping to the direct socket's port and
// sends the peer the external address, and every new one the router
// reports, until the Conn closes.
func (c *Conn) mapPort(port uint16) {
	defer c.wg.Done()
	pm, err := portmap.New(*c.o.portmap)
	if err != nil {
		c.o.log.Info("p2p: port mapping", "err", err)
		return
	}
	defer pm.Close()
	m, err := pm.Map(c.ctx, port)
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			c.o.log.Debug("p2p: port mapping", "err", err)
		}
		return
	}
	defer m.Close()
	send := func() {
		cd := Candidate{Addr: m.External(), Kind: "mapped"}
		if cd.validate() != nil {
			return
		}
		c.mu.Lock()
		c.mapped = cd.Addr
		c.mu.Unlock()
		c.o.log.Info("p2p: port mapped", "protocol", m.Protocol().String(), "external", cd.Addr)
		_ = c.sig.Send(c.ctx, encodeMessage(message{Type: "cand", Candidates: []Candidate{cd}}))
	}
	send()
	for {
		select {
		case <-c.ctx.Done():
			return
		case _, ok := <-m.Updates():
			if !ok {
				<-c.ctx.Done()
				return
			}
			send()
		}
	}
}

// Mapped returns the external address the router mapped to this side's
// direct socket, if any.
func (c *Conn) Mapped() netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mapped
}
