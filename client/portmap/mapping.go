package portmap

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// Mapping is a port mapping on the gateway: datagrams to External reach the
// local UDP port it was made for. It renews itself at half the granted
// lifetime until Close, which deletes it from the router.
type Mapping struct {
	c            *Client
	proto        Protocol
	internalPort uint16
	nonce        [12]byte   // PCP
	upnp         *upnpState // UPnP
	updates      chan netip.AddrPort
	stop         chan struct{}
	done         chan struct{}

	mu       sync.Mutex // guards the fields below
	external netip.AddrPort
	lifetime time.Duration
	expires  time.Time
	err      error // why renewal stopped
	closed   bool
}

// Protocol is the protocol that made the mapping.
func (m *Mapping) Protocol() Protocol { return m.proto }

// InternalPort is the local UDP port the mapping leads to.
func (m *Mapping) InternalPort() uint16 { return m.internalPort }

// External is the public address:port the router maps to the local port
// (the latest one: a renewal may change it).
func (m *Mapping) External() netip.AddrPort {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.external
}

// Lifetime is the lifetime the router granted last; Expires when the
// mapping lapses unless renewed.
func (m *Mapping) Lifetime() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lifetime
}

// Expires is when the mapping lapses unless renewed.
func (m *Mapping) Expires() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.expires
}

// Updates delivers the external address after each renewal that changed it
// (the newest only, if the reader is slow). It is closed when the mapping
// is closed or lapses.
func (m *Mapping) Updates() <-chan netip.AddrPort { return m.updates }

// Err says why the mapping stopped being renewed (nil while it is live;
// ErrClosed after Close).
func (m *Mapping) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// Map asks the gateway for a mapping of the local UDP port localPort,
// trying the offered protocols in Config.Protocols order (it probes first)
// and returning the first mapping made. When none works the error wraps
// ErrUnavailable and every protocol's own error (a *ResultError for a
// refusal, ErrNoAnswer for silence).
func (c *Client) Map(ctx context.Context, localPort uint16) (*Mapping, error) {
	if localPort == 0 {
		return nil, fmt.Errorf("%w: local port 0", ErrConfig)
	}
	offer, err := c.Probe(ctx)
	if err != nil {
		return nil, err
	}
	errs := []error{ErrUnavailable}
	for _, p := range c.cfg.Protocols {
		if !offer.Has(p) {
			errs = append(errs, fmt.Errorf("%v: %w", p, offer.Errors[p]))
			continue
		}
		m := &Mapping{c: c, proto: p, internalPort: localPort, updates: make(chan netip.AddrPort, 1),
			stop: make(chan struct{}), done: make(chan struct{})}
		switch p {
		case PCP:
			_, _ = rand.Read(m.nonce[:])
		case UPnP:
			m.upnp = &upnpState{location: offer.UPnPLocation, service: offer.UPnPService}
		}
		if err := m.request(ctx, offer.PMPExternal); err != nil {
			errs = append(errs, fmt.Errorf("%v: %w", p, err))
			continue
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			_ = m.delete()
			return nil, ErrClosed
		}
		c.mappings[m] = struct{}{}
		c.mu.Unlock()
		go m.renewLoop()
		return m, nil
	}
	return nil, errors.Join(errs...)
}

// request creates or renews the mapping, asking for the current external
// port again.
func (m *Mapping) request(ctx context.Context, pmpExternal netip.Addr) error {
	m.mu.Lock()
	prev := m.external
	m.mu.Unlock()
	c := m.c
	secs := uint32(c.cfg.Lifetime / time.Second)
	var (
		ext      netip.AddrPort
		lifetime uint32
		err      error
	)
	switch m.proto {
	case PCP:
		suggest := prev
		if !suggest.IsValid() {
			suggest = netip.AddrPortFrom(netip.Addr{}, m.internalPort)
		}
		ext, lifetime, err = c.pcpMap(ctx, m.nonce, m.internalPort, suggest, secs)
	case PMP:
		if !pmpExternal.IsValid() {
			pmpExternal = prev.Addr()
		}
		if !pmpExternal.IsValid() {
			if pmpExternal, err = c.pmpExternal(ctx); err != nil {
				return err
			}
		}
		suggest := prev.Port()
		if suggest == 0 {
			suggest = m.internalPort
		}
		var port uint16
		port, lifetime, err = c.pmpMap(ctx, m.internalPort, suggest, secs)
		ext = netip.AddrPortFrom(pmpExternal, port)
	case UPnP:
		ext, lifetime, err = c.upnpMap(ctx, m.upnp, m.internalPort, prev.Port(), secs)
	}
	if err != nil {
		return err
	}
	if lifetime == 0 {
		lifetime = secs // UPnP "permanent": renew on our own schedule
	}
	m.mu.Lock()
	changed := ext != m.external
	m.external = ext
	m.lifetime = time.Duration(lifetime) * time.Second
	m.expires = time.Now().Add(m.lifetime)
	m.mu.Unlock()
	if changed && prev.IsValid() {
		select {
		case <-m.updates: // drop the stale one
		default:
		}
		m.updates <- ext
	}
	return nil
}

// renewLoop renews at half the lifetime; a failed renewal is retried at an
// eighth of it (at least a second) until the mapping expires.
func (m *Mapping) renewLoop() {
	defer close(m.done)
	defer close(m.updates)
	wait := m.Lifetime() / 2
	for {
		t := time.NewTimer(wait)
		select {
		case <-m.stop:
			t.Stop()
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*m.c.cfg.Timeout)
		go func() {
			select {
			case <-m.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		err := m.request(ctx, netip.Addr{})
		cancel()
		if err == nil {
			m.c.stats.renewals.Add(1)
			wait = m.Lifetime() / 2
			continue
		}
		m.c.stats.renewFailures.Add(1)
		if !time.Now().Before(m.Expires()) {
			m.mu.Lock()
			m.err = fmt.Errorf("portmap: mapping lapsed: %w", err)
			m.mu.Unlock()
			return
		}
		wait = max(m.Lifetime()/8, time.Second)
	}
}

// Close stops renewing the mapping and deletes it from the router (best
// effort, within Config.Timeout). It is idempotent.
func (m *Mapping) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	if m.err == nil {
		m.err = ErrClosed
	}
	m.mu.Unlock()
	close(m.stop)
	<-m.done
	m.c.mu.Lock()
	delete(m.c.mappings, m)
	m.c.mu.Unlock()
	return m.delete()
}

func (m *Mapping) delete() error {
	ctx, cancel := context.WithTimeout(context.Background(), m.c.cfg.Timeout)
	defer cancel()
	c := m.c
	switch m.proto {
	case PCP:
		_, _, err := c.pcpMap(ctx, m.nonce, m.internalPort, m.External(), 0)
		return err
	case PMP:
		_, _, err := c.pmpMap(ctx, m.internalPort, 0, 0)
		return err
	case UPnP:
		return c.upnpDelete(ctx, m.upnp, m.External().Port())
	}
	return nil
}

// probePCP sends an ANNOUNCE: any PCP answer means the server speaks PCP,
// whatever its result code, except UNSUPP_VERSION.
func (c *Client) probePCP(ctx context.Context) error {
	req := AppendPCPAnnounce(nil, c.cfg.Local)
	return c.exchange(ctx, c.cfg.PMPPort, true, req, func(b []byte) (bool, error) {
		if len(b) >= 4 && b[0] == pmpVersion && b[1] >= pmpResponseBit {
			// A NAT-PMP server answering with "unsupported version".
			return false, &ResultError{Protocol: PCP, Code: 1, Text: "UNSUPP_VERSION (a NAT-PMP server)"}
		}
		r, err := ParsePCPResponse(b)
		if err != nil {
			return false, err
		}
		if r.Opcode != pcpOpAnnounce {
			return false, fmt.Errorf("%w: pcp: opcode %d", ErrMalformed, r.Opcode)
		}
		if r.Result == 1 {
			return false, pcpError(r.Result)
		}
		return true, nil
	})
}

func (c *Client) pcpMap(ctx context.Context, nonce [12]byte, port uint16, suggest netip.AddrPort, lifetime uint32) (netip.AddrPort, uint32, error) {
	req := AppendPCPMap(nil, nonce, c.cfg.Local, port, suggest, lifetime)
	var resp PCPResponse
	err := c.exchange(ctx, c.cfg.PMPPort, true, req, func(b []byte) (bool, error) {
		r, err := ParsePCPResponse(b)
		if err != nil {
			return false, err
		}
		if r.Opcode != pcpOpMap {
			return false, fmt.Errorf("%w: pcp: opcode %d", ErrMalformed, r.Opcode)
		}
		if r.Result != 0 {
			return false, pcpError(r.Result)
		}
		if r.Nonce != nonce || r.Protocol != protoUDP || r.InternalPort != port {
			return false, fmt.Errorf("%w: pcp: answer for another request", ErrMalformed)
		}
		if lifetime != 0 && (!r.External.Addr().Is4() || r.External.Port() == 0) {
			return false, fmt.Errorf("%w: pcp: external %v", ErrMalformed, r.External)
		}
		resp = r
		return true, nil
	})
	return resp.External, resp.Lifetime, err
}

func (c *Client) pmpExternal(ctx context.Context) (netip.Addr, error) {
	var ext netip.Addr
	err := c.exchange(ctx, c.cfg.PMPPort, true, AppendPMPExternalRequest(nil), func(b []byte) (bool, error) {
		r, err := ParsePMPResponse(b)
		if err != nil {
			return false, err
		}
		if r.Opcode != pmpOpExternal {
			return false, fmt.Errorf("%w: nat-pmp: opcode %d", ErrMalformed, r.Opcode)
		}
		if r.Result != 0 {
			return false, pmpError(r.Result)
		}
		ext = r.ExternalAddr
		return true, nil
	})
	return ext, err
}

func (c *Client) pmpMap(ctx context.Context, port, suggest uint16, lifetime uint32) (uint16, uint32, error) {
	var resp PMPResponse
	err := c.exchange(ctx, c.cfg.PMPPort, true, AppendPMPMapRequest(nil, port, suggest, lifetime), func(b []byte) (bool, error) {
		r, err := ParsePMPResponse(b)
		if err != nil {
			return false, err
		}
		if r.Opcode != pmpOpMapUDP {
			return false, fmt.Errorf("%w: nat-pmp: opcode %d", ErrMalformed, r.Opcode)
		}
		if r.Result != 0 {
			return false, pmpError(r.Result)
		}
		if r.InternalPort != port || (lifetime != 0 && r.ExternalPort == 0) {
			return false, fmt.Errorf("%w: nat-pmp: answer for another request", ErrMalformed)
		}
		resp = r
		return true, nil
	})
	return resp.ExternalPort, resp.Lifetime, err
}
