// Package ngclient drives rtpengine over its ng control protocol (UDP
// datagrams "COOKIE BENCODED-DICTIONARY") for the benchmarks that measure
// traverse against rtpengine: bench/sipgwload (CPU per forwarded packet)
// and cmd/traverse TestCascadeHopCost's latency phase (latency per hop).
// It speaks what those need: one audio call between two addresses
// (offer, answer), its delete, and ping.
package ngclient

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// ErrNoAnswer: rtpengine did not answer a command (five tries, 2 s each).
var ErrNoAnswer = errors.New("rtpengine does not answer")

// Client sends ng commands on one connected UDP socket. It is not safe for
// concurrent use.
type Client struct {
	c   *net.UDPConn
	seq int
	buf []byte
}

// New drives the rtpengine c is connected to (net.DialUDP to its
// --listen-ng address). Close closes c.
func New(c *net.UDPConn) *Client { return &Client{c: c, buf: make([]byte, 65536)} }

// Dial connects to the ng address ap.
func Dial(ap netip.AddrPort) (*Client, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return nil, err
	}
	return New(c), nil
}

// Close closes the socket.
func (c *Client) Close() error { return c.c.Close() }

// Do sends the dictionary of the string pairs kv (key, value, ...) and
// returns the bencoded answer, without its cookie.
func (c *Client) Do(kv ...string) (string, error) {
	c.seq++
	cookie := fmt.Sprintf("c%d", c.seq)
	var b strings.Builder
	b.WriteString(cookie + " d")
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(&b, "%d:%s%d:%s", len(kv[i]), kv[i], len(kv[i+1]), kv[i+1])
	}
	b.WriteString("e")
	for range 5 {
		if _, err := c.c.Write([]byte(b.String())); err != nil {
			return "", err
		}
		_ = c.c.SetReadDeadline(time.Now().Add(2 * time.Second))
		for {
			m, err := c.c.Read(c.buf)
			if err != nil {
				break
			}
			if strings.HasPrefix(string(c.buf[:m]), cookie+" ") {
				return string(c.buf[len(cookie)+1 : m]), nil
			}
		}
	}
	return "", ErrNoAnswer
}

// Ping is true when rtpengine answers a ping.
func (c *Client) Ping() bool {
	r, err := c.Do("command", "ping")
	return err == nil && strings.Contains(r, "6:result4:pong")
}

// SDP is a PCMU audio offer or answer for media at a.
func SDP(a netip.AddrPort) string {
	return fmt.Sprintf("v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n", a.Addr(), a.Addr(), a.Port())
}

var (
	portRe = regexp.MustCompile(`m=audio (\d+) `)
	ipRe   = regexp.MustCompile(`c=IN IP4 ([0-9.]+)`)
)

// Target is the media address in the SDP of an offer's or answer's
// result: where the other side is to send.
func Target(resp string) (netip.AddrPort, error) {
	if !strings.Contains(resp, "6:result2:ok") {
		return netip.AddrPort{}, fmt.Errorf("rtpengine: %.200q", resp)
	}
	pm, im := portRe.FindStringSubmatch(resp), ipRe.FindStringSubmatch(resp)
	if pm == nil || im == nil {
		return netip.AddrPort{}, fmt.Errorf("rtpengine SDP: %.200q", resp)
	}
	p, err := strconv.ParseUint(pm[1], 10, 16)
	if err != nil || p == 0 {
		return netip.AddrPort{}, fmt.Errorf("rtpengine SDP port %q", pm[1])
	}
	ip, err := netip.ParseAddr(im[1])
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("rtpengine SDP address: %w", err)
	}
	return netip.AddrPortFrom(ip, uint16(p)), nil
}

// Call sets up call id between the offerer's media address a and the
// answerer's b, and returns where each is to send its RTP: toB (a sends
// there, rtpengine forwards to b; from the answer's result) and toA (b
// sends there; from the offer's).
func (c *Client) Call(id string, a, b netip.AddrPort) (toB, toA netip.AddrPort, err error) {
	r, err := c.Do("command", "offer", "call-id", id, "from-tag", "a"+id, "sdp", SDP(a))
	if err != nil {
		return toB, toA, err
	}
	if toA, err = Target(r); err != nil {
		return toB, toA, err
	}
	r, err = c.Do("command", "answer", "call-id", id, "from-tag", "a"+id, "to-tag", "b"+id, "sdp", SDP(b))
	if err != nil {
		return toB, toA, err
	}
	toB, err = Target(r)
	return toB, toA, err
}

// Delete ends call id.
func (c *Client) Delete(id string) error {
	_, err := c.Do("command", "delete", "call-id", id, "from-tag", "a"+id)
	return err
}
