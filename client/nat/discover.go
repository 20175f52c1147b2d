package nat

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/pion/stun/v3"
)

// RFC 5780 section 7.2: CHANGE-REQUEST flags.
const (
	changeIP   = 0x4
	changePort = 0x2
)

type discovery struct {
	cfg    Config
	server netip.AddrPort
	bind   netip.AddrPort
	opened int
	socks  []*net.UDPConn
}

// response is one decoded answer.
type response struct {
	from   netip.AddrPort // where the datagram came from
	mapped netip.AddrPort // XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS)
	other  netip.AddrPort // OTHER-ADDRESS
	origin netip.AddrPort // RESPONSE-ORIGIN
	code   int            // ERROR-CODE of an error response, else 0
}

func resolve(ctx context.Context, hostport string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(hostport); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: server %q: %v", ErrConfig, hostport, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: server port %q", ErrConfig, port)
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		return netip.AddrPort{}, fmt.Errorf("%w: resolve %q: %v", ErrUnreachable, host, err)
	}
	// Prefer IPv4: RFC 5780 servers are mostly deployed there, and a
	// dual-stack name must not silently pick the family the server lacks.
	ip := ips[0].Unmap()
	for _, a := range ips {
		if a.Unmap().Is4() {
			ip = a.Unmap()
			break
		}
	}
	return netip.AddrPortFrom(ip, uint16(p)), nil
}

func (d *discovery) run(ctx context.Context) (rep Report, err error) {
	defer func() {
		for _, c := range d.socks {
			c.Close()
		}
	}()
	if err := d.parseLocal(); err != nil {
		return rep, err
	}
	rep.Server = d.server

	// Test I: the mapped address and the server's other address.
	a, err := d.open()
	if err != nil {
		return rep, err
	}
	rep.Local = localAddr(a)
	r1, err := d.exchange(ctx, a, a, d.server, d.request(0, 0))
	if errors.Is(err, errNoResponse) {
		if mapped, terr := d.bindingTCP(ctx); terr == nil {
			rep.PublicAddr = mapped
			rep.UDPBlocked = true
			return rep, udpBlocked(d.server, mapped)
		}
		return rep, fmt.Errorf("%w: %s did not answer %d Binding requests", ErrUnreachable, d.server, d.cfg.Attempts)
	}
	if err != nil {
		return rep, err
	}
	if r1.code != 0 {
		return rep, fmt.Errorf("%w: %d to a plain Binding request", ErrServer, r1.code)
	}
	rep.PublicAddr = r1.mapped
	rep.NAT = !d.isLocal(r1.mapped, a)
	o := r1.other
	if !o.IsValid() || o.Addr() == d.server.Addr() || o.Port() == d.server.Port() || o.Addr().Is4() != d.server.Addr().Is4() {
		return rep, fmt.Errorf("%w: %s answered with OTHER-ADDRESS %q", ErrNoRFC5780, d.server, o)
	}
	rep.OtherAddress = o

	// Mapping (section 4.3): test II to the other IP, test III to the
	// other IP and port.
	r2, err := d.exchange(ctx, a, a, netip.AddrPortFrom(o.Addr(), d.server.Port()), d.request(0, 0))
	switch {
	case err != nil && !errors.Is(err, errNoResponse):
		return rep, err
	case err != nil:
		rep.Notes = append(rep.Notes, "mapping test II: no answer from the server's other address")
	case r2.mapped == r1.mapped:
		rep.Mapping = EndpointIndependent
	default:
		r3, err := d.exchange(ctx, a, a, o, d.request(0, 0))
		switch {
		case err != nil && !errors.Is(err, errNoResponse):
			return rep, err
		case err != nil:
			rep.Notes = append(rep.Notes, "mapping test III: no answer from the server's other address and port")
		case r3.mapped == r2.mapped:
			rep.Mapping = AddressDependent
		default:
			rep.Mapping = AddressAndPortDependent
		}
	}

	// Filtering (section 4.4), from a fresh socket that has talked to the
	// primary address only: test II asks for the answer from the other IP
	// and port, test III from the other port.
	b, err := d.open()
	if err != nil {
		return rep, err
	}
	rb, err := d.exchange(ctx, b, b, d.server, d.request(0, 0))
	if err != nil {
		if !errors.Is(err, errNoResponse) {
			return rep, err
		}
		rep.Notes = append(rep.Notes, "filtering test I: no answer")
		return rep, nil
	}
	f2, err := d.exchange(ctx, b, b, d.server, d.request(changeIP|changePort, 0))
	switch {
	case err != nil && !errors.Is(err, errNoResponse):
		return rep, err
	case err == nil && f2.code != 0:
		return rep, fmt.Errorf("%w: %d to CHANGE-REQUEST", ErrServer, f2.code)
	case err == nil && f2.from != o:
		rep.Notes = append(rep.Notes, fmt.Sprintf("filtering test II: answer came from %s, not %s", f2.from, o))
	case err == nil:
		rep.Filtering = EndpointIndependent
	default:
		f3, err := d.exchange(ctx, b, b, d.server, d.request(changePort, 0))
		switch {
		case err != nil && !errors.Is(err, errNoResponse):
			return rep, err
		case err == nil && f3.from != netip.AddrPortFrom(d.server.Addr(), o.Port()):
			rep.Notes = append(rep.Notes, fmt.Sprintf("filtering test III: answer came from %s", f3.from))
		case err == nil:
			rep.Filtering = AddressDependent
		default:
			rep.Filtering = AddressAndPortDependent
		}
	}

	// Hairpinning (section 4.5): b sends to a's public address. a first
	// sends to b's public address so that a filtering NAT lets b in.
	rep.Hairpinning, err = d.hairpin(ctx, a, b, r1.mapped, rb.mapped)
	if err != nil {
		return rep, err
	}

	if d.cfg.Lifetime {
		if err := d.lifetime(ctx, &rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

func (d *discovery) parseLocal() error {
	unspec := netip.IPv4Unspecified()
	if d.server.Addr().Is6() {
		unspec = netip.IPv6Unspecified()
	}
	d.bind = netip.AddrPortFrom(unspec, 0)
	if d.cfg.Local == "" {
		return nil
	}
	if ap, err := netip.ParseAddrPort(d.cfg.Local); err == nil {
		d.bind = ap
	} else if ip, err := netip.ParseAddr(d.cfg.Local); err == nil {
		d.bind = netip.AddrPortFrom(ip, 0)
	} else {
		return fmt.Errorf("%w: local %q is neither IP nor IP:port", ErrConfig, d.cfg.Local)
	}
	if d.bind.Addr().Is4() != d.server.Addr().Is4() {
		return fmt.Errorf("%w: local %s and server %s are of different families", ErrConfig, d.bind, d.server)
	}
	return nil
}

// open binds a test socket: the first on Config.Local, the rest on a free
// port of the same IP.
func (d *discovery) open() (*net.UDPConn, error) {
	laddr := d.bind
	if d.opened > 0 {
		laddr = netip.AddrPortFrom(laddr.Addr(), 0)
	}
	network := "udp4"
	if laddr.Addr().Is6() {
		network = "udp6"
	}
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(laddr))
	if err != nil {
		return nil, fmt.Errorf("nat: bind %s: %w", laddr, err)
	}
	d.opened++
	d.socks = append(d.socks, c)
	return c, nil
}

func localAddr(c *net.UDPConn) netip.AddrPort {
	ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// isLocal reports whether mapped is c's own address: no translation.
func (d *discovery) isLocal(mapped netip.AddrPort, c *net.UDPConn) bool {
	l := localAddr(c)
	if mapped.Port() != l.Port() {
		return false
	}
	if !l.Addr().IsUnspecified() {
		return mapped.Addr() == l.Addr()
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Unmap() == mapped.Addr() {
			return true
		}
	}
	return false
}

// request builds a Binding request with a fresh transaction ID, and
// CHANGE-REQUEST or RESPONSE-PORT when asked.
func (d *discovery) request(change uint32, responsePort uint16) *stun.Message {
	setters := []stun.Setter{stun.TransactionID, stun.BindingRequest}
	if change != 0 {
		v := make([]byte, 4)
		binary.BigEndian.PutUint32(v, change)
		setters = append(setters, stun.RawAttribute{Type: stun.AttrChangeRequest, Value: v})
	}
	if responsePort != 0 {
		v := make([]byte, 4)
		binary.BigEndian.PutUint16(v, responsePort)
		setters = append(setters, stun.RawAttribute{Type: stun.AttrResponsePort, Value: v})
	}
	if d.cfg.Software != "" {
		setters = append(setters, stun.NewSoftware(d.cfg.Software))
	}
	setters = append(setters, stun.Fingerprint)
	return stun.MustBuild(setters...)
}

// exchange sends req from sendOn to dst, retransmitting per RFC 8489
// section 6.2.1 (Attempts requests, RTO doubling), and waits on recvOn for
// any message carrying req's transaction ID. It returns errNoResponse when
// none came.
func (d *discovery) exchange(ctx context.Context, sendOn, recvOn *net.UDPConn, dst netip.AddrPort, req *stun.Message) (response, error) {
	stop := context.AfterFunc(ctx, func() { _ = recvOn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	defer recvOn.SetReadDeadline(time.Time{})
	buf := make([]byte, 2048)
	rto := d.cfg.RTO
	for i := 0; i < d.cfg.Attempts; i++ {
		if err := ctx.Err(); err != nil {
			return response{}, err
		}
		if _, err := sendOn.WriteToUDPAddrPort(req.Raw, dst); err != nil {
			return response{}, fmt.Errorf("nat: send to %s: %w", dst, err)
		}
		_ = recvOn.SetReadDeadline(time.Now().Add(rto))
		for {
			n, from, err := recvOn.ReadFromUDPAddrPort(buf)
			if err != nil {
				if ctx.Err() != nil {
					return response{}, ctx.Err()
				}
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				// ICMP errors (port unreachable) surface on some
				// systems as read errors: keep waiting out the RTO.
				continue
			}
			r, ok := parse(buf[:n], req.TransactionID)
			if !ok {
				continue
			}
			r.from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
			return r, nil
		}
		rto *= 2
	}
	return response{}, errNoResponse
}

func parse(b []byte, id [stun.TransactionIDSize]byte) (response, bool) {
	m := &stun.Message{Raw: b}
	if err := m.Decode(); err != nil || m.TransactionID != id {
		return response{}, false
	}
	var r response
	if m.Type.Class == stun.ClassErrorResponse {
		var ec stun.ErrorCodeAttribute
		if ec.GetFrom(m) == nil {
			r.code = int(ec.Code)
		} else {
			r.code = 400
		}
		return r, true
	}
	var xa stun.XORMappedAddress
	if xa.GetFrom(m) == nil {
		r.mapped = addrPort(xa.IP, xa.Port)
	} else {
		var ma stun.MappedAddress
		if ma.GetFrom(m) == nil {
			r.mapped = addrPort(ma.IP, ma.Port)
		}
	}
	var oa stun.OtherAddress
	if oa.GetFrom(m) == nil {
		r.other = addrPort(oa.IP, oa.Port)
	}
	var ro stun.ResponseOrigin
	if ro.GetFrom(m) == nil {
		r.origin = addrPort(ro.IP, ro.Port)
	}
	return r, true
}

func addrPort(ip net.IP, port int) netip.AddrPort {
	a, ok := netip.AddrFromSlice(ip)
	if !ok || port < 0 || port > 65535 {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(port))
}

// hairpin opens a's filter toward b's public address, then has b send a
// request to a's public address and waits for it on a.
func (d *discovery) hairpin(ctx context.Context, a, b *net.UDPConn, aPub, bPub netip.AddrPort) (bool, error) {
	if _, err := a.WriteToUDPAddrPort(d.request(0, 0).Raw, bPub); err != nil {
		return false, nil
	}
	_, err := d.exchange(ctx, b, a, aPub, d.request(0, 0))
	if errors.Is(err, errNoResponse) {
		return false, nil
	}
	return err == nil, err
}

// lifetime estimates the binding lifetime (section 4.6): sockets X_i each
// make a mapping at once; after T_i of silence a separate socket asks the
// server to answer to X_i's public port (RESPONSE-PORT). The answer gets in
// only while X_i's mapping lives. A coarse doubling round finds the range,
// a linear round narrows it.
func (d *discovery) lifetime(ctx context.Context, rep *Report) error {
	if !rep.NAT {
		rep.Notes = append(rep.Notes, "binding lifetime: no NAT, so no binding to time")
		return nil
	}
	var times []time.Duration
	for t := time.Second; t < d.cfg.LifetimeMax; t *= 2 {
		times = append(times, t)
	}
	times = append(times, d.cfg.LifetimeMax)
	ok, fail, err := d.lifetimeRound(ctx, times)
	if err != nil {
		return err
	}
	if fail > 0 && fail-ok > time.Second {
		step := (fail - ok) / 8
		if step < time.Second {
			step = time.Second
		}
		var fine []time.Duration
		for t := ok + step; t < fail; t += step {
			fine = append(fine, t)
		}
		ok2, fail2, err := d.lifetimeRound(ctx, fine)
		if err != nil {
			return err
		}
		if ok2 > ok {
			ok = ok2
		}
		if fail2 > 0 {
			fail = fail2
		}
	}
	rep.BindingLifetime = Duration(ok)
	rep.BindingLifetimeMax = Duration(fail)
	return nil
}

// lifetimeRound returns the longest probed silence the mapping survived and
// the shortest it did not (0 if all survived).
func (d *discovery) lifetimeRound(ctx context.Context, times []time.Duration) (ok, fail time.Duration, err error) {
	if len(times) == 0 {
		return 0, 0, nil
	}
	y, err := d.open()
	if err != nil {
		return 0, 0, err
	}
	xs := make([]*net.UDPConn, len(times))
	mapped := make([]netip.AddrPort, len(times))
	for i := range times {
		if xs[i], err = d.open(); err != nil {
			return 0, 0, err
		}
		r, err := d.exchange(ctx, xs[i], xs[i], d.server, d.request(0, 0))
		if err != nil {
			return 0, 0, fmt.Errorf("nat: binding lifetime: %w", err)
		}
		mapped[i] = r.mapped
	}
	start := time.Now()
	for i, t := range times {
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(time.Until(start.Add(t))):
		}
		r, err := d.exchange(ctx, y, xs[i], d.server, d.request(0, mapped[i].Port()))
		if err != nil && !errors.Is(err, errNoResponse) {
			return 0, 0, err
		}
		if err == nil && r.code != 0 {
			return 0, 0, fmt.Errorf("%w: %d to RESPONSE-PORT", ErrServer, r.code)
		}
		if err != nil {
			return ok, t, nil
		}
		ok = t
		xs[i].Close()
	}
	return ok, 0, nil
}
