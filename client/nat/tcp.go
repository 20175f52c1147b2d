package nat

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// bindingTCP asks the server for the mapped address over TCP (RFC 8489
// section 6.2.2), to tell "UDP is blocked on the way" from "the server is
// down" when UDP got no answer. Servers that speak RFC 5780 over UDP
// normally answer Binding on the same port over TCP too.
func (d *discovery) bindingTCP(ctx context.Context) (netip.AddrPort, error) {
	timeout := d.cfg.RTO * time.Duration(1<<d.cfg.Attempts-1)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dialer := net.Dialer{}
	if d.bind.Addr().IsValid() && !d.bind.Addr().IsUnspecified() {
		dialer.LocalAddr = &net.TCPAddr{IP: d.bind.Addr().AsSlice()}
	}
	c, err := dialer.DialContext(ctx, "tcp", d.server.String())
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	req := d.request(0, 0)
	if _, err := c.Write(req.Raw); err != nil {
		return netip.AddrPort{}, err
	}
	hdr := make([]byte, 20)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return netip.AddrPort{}, err
	}
	n := int(binary.BigEndian.Uint16(hdr[2:4]))
	msg := make([]byte, 20+n)
	copy(msg, hdr)
	if _, err := io.ReadFull(c, msg[20:]); err != nil {
		return netip.AddrPort{}, err
	}
	r, ok := parse(msg, req.TransactionID)
	if !ok || r.code != 0 || !r.mapped.IsValid() {
		return netip.AddrPort{}, errors.New("nat: no usable Binding response over TCP")
	}
	return r.mapped, nil
}

// udpBlocked is the error Discover returns when UDP gets no answer but TCP
// to the same server does.
func udpBlocked(server netip.AddrPort, mapped netip.AddrPort) error {
	return fmt.Errorf("%w: %s answers Binding over TCP (mapped %s) but not over UDP", ErrUDPBlocked, server, mapped)
}
