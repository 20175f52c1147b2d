package sipgw

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/traverse-rtc/traverse/internal/mediaproxy"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestTCPClient: an outside client speaking SIP over TCP calls the inside
// server (reached over UDP) through the gateway's one SIP port.
func TestTCPClient(t *testing.T) {
	callOverStream(t, "tcp", 77, func(c *Config, _ *mediaproxy.Config) { c.TCP = true })
}

// TestTLSClient: the same over SIP/TLS (RFC 3261 section 26.3.1) on the
// optional TLS listener, with a self-signed certificate.
func TestTLSClient(t *testing.T) {
	callOverStream(t, "tls", 78, func(c *Config, _ *mediaproxy.Config) { c.TLS = netip.MustParseAddrPort("127.0.0.1:0") })
}

// callOverStream makes one call from an outside client on transport (tcp
// or tls) with an SSRC, carries media both ways and hangs up.
func callOverStream(t *testing.T, transport string, ssrc uint32, mod func(*Config, *mediaproxy.Config)) {
	uas := startUAS(t, insideIP)
	tg := startGateway(t, uas.addr.String(), mod)
	opts := []sipgo.UserAgentOption{sipgo.WithUserAgentHostname(clientIP.String())}
	port, contactPort := tg.gw.Addr().Port(), 5060
	if transport == "tls" {
		opts = append(opts, sipgo.WithUserAgenTLSConfig(&tls.Config{InsecureSkipVerify: true})) //nolint:gosec // the test's self-signed gateway
		port, contactPort = tg.gw.TLSAddr().Port(), 5061
	}
	ua, err := sipgo.NewUA(opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer ua.Close()
	cli, err := sipgo.NewClient(ua, sipgo.WithClientHostname(clientIP.String()))
	if err != nil {
		t.Fatal(err)
	}
	params := sip.HeaderParams{{K: "transport", V: transport}}
	dua := sipgo.DialogUA{Client: cli, ContactHDR: sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: transport, Host: clientIP.String(), Port: contactPort,
		UriParams: params}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := udpOn(t, clientIP)
	target := sip.Uri{Scheme: "sip", User: "svc", Host: "127.0.0.1", Port: int(port), UriParams: params}
	s, err := dua.Invite(ctx, target, offerSDP(m.LocalAddr().(*net.UDPAddr).AddrPort(), netip.AddrPort{}, ssrc, 0), sip.NewHeader("Content-Type", "application/sdp"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.WaitAnswer(ctx, sipgo.AnswerOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	echoOnce(t, m, tg.mp.RTPAddr(), rtp(ssrc, 1, "over "+transport))
	if err := s.Bye(ctx); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "released", func() bool { return tg.gw.Calls() == 0 && tg.mp.Streams() == 0 && uas.byes.Load() == 1 })
}

// TestStreamRequestsAtStart: requests that TCP clients sent once the
// gateway's listeners were bound, before it served them (they wait in the
// listener's backlog), are forwarded upstream, not refused. The gateway
// forwards every request from its UDP socket, which sipgo knows only once
// that socket is served: a TCP request handled first got 503 (sipgo tried
// to bind the UDP address again: "address already in use"), the first
// request after the gateway said it was listening.
func TestStreamRequestsAtStart(t *testing.T) {
	uas := startUAS(t, insideIP)
	tg := newGateway(t, uas.addr.String(), func(c *Config, _ *mediaproxy.Config) { c.TCP = true })
	const n = 4
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.DialTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(clientIP, 0)), net.TCPAddrFromAddrPort(tg.gw.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		msg := strings.ReplaceAll(sipMsg("OPTIONS", "sip:svc@127.0.0.1", fmt.Sprintf("start%d", i), "<sip:a@LOCAL>;tag=1", "<sip:svc@127.0.0.1>", 1, ""),
			"LOCAL", c.LocalAddr().String())
		msg = strings.NewReplacer("SIP/2.0/UDP", "SIP/2.0/TCP", "BRANCH", fmt.Sprintf("z9hG4bKstart%d", i)).Replace(msg)
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	tg.run(t)
	for i, c := range conns {
		// goUAS serves no OPTIONS: sipgo answers 405 for it.
		if code := streamCode(t, c, 5*time.Second); code != 405 {
			t.Errorf("request %d sent before the gateway served: %d, want the upstream's 405", i, code)
		}
	}
}

// streamCode returns the status of the first final response read from a
// stream connection within d, 0 when none comes.
func streamCode(t *testing.T, c net.Conn, d time.Duration) int {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return 0
		}
		if code := statusOf([]byte(line)); code >= 200 {
			return code
		}
	}
}
