package mediaproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"
)

// The control protocol: one UDP datagram per request and per reply, so a
// separate signaling proxy (Kamailio, OpenSIPS, or the gateway in another
// process) can drive the media proxy. docs/mediaproxy.md describes it.
//
//	request: transaction id (4 bytes, echoed) | descriptor header
//	reply:   transaction id (4) | status (1) | flags (1: bit 0 SSRC known, bit 1 offloaded)
//	         | inside RTP port (2) | inside RTCP port (2) | fixed RTP port (2) | fixed RTCP port (2)
//	         | SSRC (4) | packets to server (8) | packets to client (8)

// Status is a control reply's status byte.
type Status uint8

// Reply statuses.
const (
	StatusOK         Status = 0
	StatusBadRequest Status = 1 // the descriptor did not parse
	StatusNoSession  Status = 2 // OpDelete or OpQuery for an unknown stream
	StatusNoPorts    Status = 3 // the inside pool is exhausted
	StatusError      Status = 4 // anything else
)

// ReplyLen is the length of a control reply.
const ReplyLen = 34

// AppendRequest appends a control request to b.
func AppendRequest(b []byte, txid uint32, d *Descriptor) []byte {
	b = binary.BigEndian.AppendUint32(b, txid)
	return AppendDescriptor(b, d)
}

// ParseRequest decodes a control request.
func ParseRequest(b []byte) (uint32, Descriptor, error) {
	if len(b) < 4 {
		return 0, Descriptor{}, ErrShortDescriptor
	}
	d, _, err := ParseDescriptor(b[4:])
	return binary.BigEndian.Uint32(b), d, err
}

// AppendReply appends a control reply to b.
func AppendReply(b []byte, txid uint32, st Status, r Reply) []byte {
	b = binary.BigEndian.AppendUint32(b, txid)
	var fl byte
	if r.SSRCKnown {
		fl |= 1
	}
	if r.Offloaded {
		fl |= 2
	}
	b = append(b, byte(st), fl)
	for _, v := range [...]uint16{r.InsideRTP, r.InsideRTCP, r.FixedRTP, r.FixedRTCP} {
		b = binary.BigEndian.AppendUint16(b, v)
	}
	b = binary.BigEndian.AppendUint32(b, r.SSRC)
	b = binary.BigEndian.AppendUint64(b, r.ToServer)
	return binary.BigEndian.AppendUint64(b, r.ToClient)
}

// ParseReply decodes a control reply.
func ParseReply(b []byte) (uint32, Status, Reply, error) {
	if len(b) < ReplyLen {
		return 0, 0, Reply{}, ErrShortDescriptor
	}
	r := Reply{
		SSRCKnown: b[5]&1 != 0, Offloaded: b[5]&2 != 0,
		InsideRTP: binary.BigEndian.Uint16(b[6:]), InsideRTCP: binary.BigEndian.Uint16(b[8:]),
		FixedRTP: binary.BigEndian.Uint16(b[10:]), FixedRTCP: binary.BigEndian.Uint16(b[12:]),
		SSRC:     binary.BigEndian.Uint32(b[14:]),
		ToServer: binary.BigEndian.Uint64(b[18:]), ToClient: binary.BigEndian.Uint64(b[26:]),
	}
	return binary.BigEndian.Uint32(b), Status(b[4]), r, nil
}

func statusOf(err error) Status {
	switch {
	case err == nil:
		return StatusOK
	case errors.Is(err, ErrNoSession):
		return StatusNoSession
	case errors.Is(err, ErrNoPorts):
		return StatusNoPorts
	case errors.Is(err, ErrShortDescriptor), errors.Is(err, ErrVersion), errors.Is(err, ErrBadOp),
		errors.Is(err, ErrDirection), errors.Is(err, ErrBadAddress), errors.Is(err, ErrCallID):
		return StatusBadRequest
	}
	return StatusError
}

// ControlServer serves the control protocol on a UDP socket.
type ControlServer struct {
	p    *Proxy
	conn *net.UDPConn
	wg   sync.WaitGroup
	once sync.Once
	// BadRequests counts requests that did not parse.
	bad uint64
}

// ListenControl binds addr and serves control requests for p until Close.
// Anyone who can reach addr controls the proxy: bind it to loopback or an
// internal address only.
func ListenControl(p *Proxy, addr string) (*ControlServer, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	c, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, err
	}
	s := &ControlServer{p: p, conn: c}
	// Media must never be aimed at the control port.
	p.AddOwnEndpoints(s.Addr())
	s.wg.Add(1)
	go s.loop()
	return s, nil
}

// Addr is the bound control address.
func (s *ControlServer) Addr() netip.AddrPort { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Close stops the server; it is idempotent.
func (s *ControlServer) Close() error {
	s.once.Do(func() {
		s.conn.Close()
		s.wg.Wait()
	})
	return nil
}

func (s *ControlServer) loop() {
	defer s.wg.Done()
	buf := make([]byte, 2048)
	out := make([]byte, 0, ReplyLen)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		txid, d, err := ParseRequest(buf[:n])
		var r Reply
		if err == nil {
			r, err = s.p.Apply(&d)
		} else {
			s.bad++
		}
		if n < 4 {
			continue
		}
		_, _ = s.conn.WriteToUDPAddrPort(AppendReply(out[:0], txid, statusOf(err), r), from)
	}
}

// ControlClient sends control requests to a media proxy over UDP. It is
// safe for concurrent use; requests are serialised.
type ControlClient struct {
	mu   sync.Mutex // guards conn, txid and buf
	conn *net.UDPConn
	txid uint32
	buf  []byte
}

// DialControl connects to a media proxy's control address.
func DialControl(addr netip.AddrPort) (*ControlClient, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, err
	}
	return &ControlClient{conn: c, buf: make([]byte, 2048)}, nil
}

// Close closes the client.
func (c *ControlClient) Close() error { return c.conn.Close() }

// ErrStatus is returned by ControlClient.Do for a reply whose status is not
// StatusOK.
var ErrStatus = errors.New("mediaproxy: control request refused")

// Do sends d and waits for the reply, retrying three times within the
// context's deadline (1 s when it has none).
func (c *ControlClient) Do(ctx context.Context, d *Descriptor) (Reply, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.txid++
	req := AppendRequest(nil, c.txid, d)
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(time.Second)
	}
	per := time.Until(deadline) / 3
	for try := 0; try < 3; try++ {
		if _, err := c.conn.Write(req); err != nil {
			return Reply{}, err
		}
		_ = c.conn.SetReadDeadline(time.Now().Add(per))
		for {
			n, err := c.conn.Read(c.buf)
			if err != nil {
				break
			}
			txid, st, r, err := ParseReply(c.buf[:n])
			if err != nil || txid != c.txid {
				continue
			}
			if st != StatusOK {
				return r, errors.Join(ErrStatus, statusErr(st))
			}
			return r, nil
		}
		if ctx.Err() != nil {
			return Reply{}, ctx.Err()
		}
	}
	return Reply{}, context.DeadlineExceeded
}

func statusErr(st Status) error {
	switch st {
	case StatusBadRequest:
		return ErrBadOp
	case StatusNoSession:
		return ErrNoSession
	case StatusNoPorts:
		return ErrNoPorts
	}
	return errors.New("mediaproxy: internal error")
}
