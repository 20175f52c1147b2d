package turn

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

// stunClient is a minimal TURN client for tests that must see the exact
// error codes: it speaks over one UDP socket and learns realm and nonce
// from the first 401.
type stunClient struct {
	t           testing.TB
	c           *net.UDPConn
	tcp         net.Conn // set: the client speaks over this stream instead
	rbuf        []byte   // stream bytes read but not yet framed
	tls         bool     // tcp is TLS
	server      netip.AddrPort
	user, pass  string
	realm       string
	nonce       string
	noRetryAuth bool
}

func newSTUNClient(t testing.TB, server netip.AddrPort, user, pass string) *stunClient {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &stunClient{t: t, c: c, server: server, user: user, pass: pass}
}

var errTimeout = errors.New("no response")

// newTCPSTUNClient is a stunClient over a TCP connection to server.
func newTCPSTUNClient(t testing.TB, server netip.AddrPort, user, pass string) *stunClient {
	t.Helper()
	conn, err := net.Dial("tcp", server.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &stunClient{t: t, tcp: conn, server: server, user: user, pass: pass}
}

// newTLSSTUNClient is a stunClient over a TLS connection to server.
func newTLSSTUNClient(t testing.TB, server netip.AddrPort, user, pass string) *stunClient {
	t.Helper()
	conn, err := tls.Dial("tcp", server.String(), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // test server's self-signed certificate
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &stunClient{t: t, tcp: conn, tls: true, server: server, user: user, pass: pass}
}

// sibling opens another connection to c's server the way c was opened,
// with c's credentials, realm and nonce.
func (c *stunClient) sibling() *stunClient {
	var d *stunClient
	if c.tls {
		d = newTLSSTUNClient(c.t, c.server, c.user, c.pass)
	} else {
		d = newTCPSTUNClient(c.t, c.server, c.user, c.pass)
	}
	d.realm, d.nonce = c.realm, c.nonce
	return d
}

// readFrame reads the next STUN or ChannelData frame from the stream.
func (c *stunClient) readFrame(deadline time.Time) ([]byte, error) {
	_ = c.tcp.SetReadDeadline(deadline)
	buf := make([]byte, 4096)
	for {
		if len(c.rbuf) >= 4 {
			n, _, ok := streamFrameLen(c.rbuf)
			if !ok {
				return nil, fmt.Errorf("bad frame %x", c.rbuf[:4])
			}
			if len(c.rbuf) >= n {
				f := append([]byte(nil), c.rbuf[:n]...)
				c.rbuf = c.rbuf[n:]
				return f, nil
			}
		}
		k, err := c.tcp.Read(buf)
		if err != nil {
			return nil, err
		}
		c.rbuf = append(c.rbuf, buf[:k]...)
	}
}

// roundTrip sends m and waits for the response with its transaction ID.
func (c *stunClient) roundTrip(m *stun.Message) (*stun.Message, error) {
	if c.tcp != nil {
		if _, err := c.tcp.Write(m.Raw); err != nil {
			return nil, err
		}
		deadline := time.Now().Add(2 * time.Second)
		for {
			f, err := c.readFrame(deadline)
			if err != nil {
				return nil, errTimeout
			}
			resp := &stun.Message{Raw: f}
			if isChannelData(f) || resp.Decode() != nil || resp.TransactionID != m.TransactionID {
				continue
			}
			return resp, nil
		}
	}
	if _, err := c.c.WriteToUDPAddrPort(m.Raw, c.server); err != nil {
		return nil, err
	}
	buf := make([]byte, 2048)
	deadline := time.Now().Add(time.Second)
	for {
		_ = c.c.SetReadDeadline(deadline)
		n, _, err := c.c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return nil, errTimeout
		}
		resp := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if resp.Decode() != nil || resp.TransactionID != m.TransactionID {
			continue
		}
		return resp, nil
	}
}

// do sends a request of method with the long-term credential (learning
// realm and nonce on 401 and 438 and retrying once) and returns the
// response.
func (c *stunClient) do(method stun.Method, setters ...stun.Setter) *stun.Message {
	c.t.Helper()
	for try := 0; try < 3; try++ {
		all := []stun.Setter{stun.TransactionID, stun.NewType(method, stun.ClassRequest)}
		all = append(all, setters...)
		if c.nonce != "" {
			all = append(all, stun.NewUsername(c.user), stun.NewRealm(c.realm), stun.NewNonce(c.nonce),
				stun.NewLongTermIntegrity(c.user, c.realm, c.pass))
		}
		all = append(all, stun.Fingerprint)
		m := stun.MustBuild(all...)
		resp, err := c.roundTrip(m)
		if err != nil {
			c.t.Fatalf("%v: %v", method, err)
		}
		code := errCode(resp)
		if (code == 401 && c.nonce == "") || code == 438 {
			var realm stun.Realm
			var nonce stun.Nonce
			if realm.GetFrom(resp) != nil || nonce.GetFrom(resp) != nil {
				c.t.Fatalf("%v: %d without realm or nonce", method, code)
			}
			c.realm, c.nonce = string(realm), string(nonce)
			if !c.noRetryAuth || code == 401 {
				continue
			}
		}
		return resp
	}
	c.t.Fatalf("%v: no answer after retries", method)
	return nil
}

func errCode(m *stun.Message) int {
	if m.Type.Class != stun.ClassErrorResponse {
		return 0
	}
	var ec stun.ErrorCodeAttribute
	if ec.GetFrom(m) != nil {
		return -1
	}
	return int(ec.Code)
}

func requestedUDP() stun.Setter { return rawAttr{stun.AttrRequestedTransport, []byte{17, 0, 0, 0}} }

func peerAttr(ap netip.AddrPort) stun.Setter {
	return &xorAddr{t: stun.AttrXORPeerAddress, ap: ap}
}

func channelAttr(n uint16) stun.Setter {
	return rawAttr{stun.AttrChannelNumber, append(binary.BigEndian.AppendUint16(nil, n), 0, 0)}
}

// allocate allocates and fails the test unless it succeeds.
func (c *stunClient) allocate() netip.AddrPort {
	c.t.Helper()
	resp := c.do(stun.MethodAllocate, requestedUDP())
	if code := errCode(resp); code != 0 {
		c.t.Fatalf("allocate: error %d", code)
	}
	var x stun.XORMappedAddress
	if err := x.GetFromAs(resp, stun.AttrXORRelayedAddress); err != nil {
		c.t.Fatalf("allocate: %v", err)
	}
	ip, _ := netip.AddrFromSlice(x.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(x.Port))
}
