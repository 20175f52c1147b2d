package sipgw

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/traverse-rtc/traverse/internal/mediaproxy"
)

// TestTCPClient: an outside client speaking SIP over TCP calls the inside
// server (reached over UDP) through the gateway's one SIP port.
func TestTCPClient(t *testing.T) {
	uas := startUAS(t, insideIP)
	tg := startGateway(t, uas.addr.String(), func(c *Config, _ *mediaproxy.Config) { c.TCP = true })
	ua, err := sipgo.NewUA(sipgo.WithUserAgentHostname(clientIP.String()))
	if err != nil {
		t.Fatal(err)
	}
	defer ua.Close()
	cli, err := sipgo.NewClient(ua, sipgo.WithClientHostname(clientIP.String()))
	if err != nil {
		t.Fatal(err)
	}
	dua := sipgo.DialogUA{Client: cli, ContactHDR: sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "tcp", Host: clientIP.String(), Port: 5060,
		UriParams: sip.HeaderParams{{K: "transport", V: "tcp"}}}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := udpOn(t, clientIP)
	target := sip.Uri{Scheme: "sip", User: "svc", Host: "127.0.0.1", Port: int(tg.gw.Addr().Port()), UriParams: sip.HeaderParams{{K: "transport", V: "tcp"}}}
	s, err := dua.Invite(ctx, target, offerSDP(m.LocalAddr().(*net.UDPAddr).AddrPort(), netip.AddrPort{}, 77, 0), sip.NewHeader("Content-Type", "application/sdp"))
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
	echoOnce(t, m, tg.mp.RTPAddr(), rtp(77, 1, "over tcp"))
	if err := s.Bye(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "released", func() bool { return tg.gw.Calls() == 0 && tg.mp.Streams() == 0 && uas.byes.Load() == 1 })
}

// TestTLSClient: the same over SIP/TLS (RFC 3261 section 26.3.1) on the
// optional TLS listener, with a self-signed certificate.
func TestTLSClient(t *testing.T) {
	uas := startUAS(t, insideIP)
	tg := startGateway(t, uas.addr.String(), func(c *Config, _ *mediaproxy.Config) { c.TLS = netip.MustParseAddrPort("127.0.0.1:0") })
	ua, err := sipgo.NewUA(sipgo.WithUserAgentHostname(clientIP.String()),
		sipgo.WithUserAgenTLSConfig(&tls.Config{InsecureSkipVerify: true})) //nolint:gosec // the test's self-signed gateway
	if err != nil {
		t.Fatal(err)
	}
	defer ua.Close()
	cli, err := sipgo.NewClient(ua, sipgo.WithClientHostname(clientIP.String()))
	if err != nil {
		t.Fatal(err)
	}
	dua := sipgo.DialogUA{Client: cli, ContactHDR: sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "tls", Host: clientIP.String(), Port: 5061,
		UriParams: sip.HeaderParams{{K: "transport", V: "tls"}}}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := udpOn(t, clientIP)
	target := sip.Uri{Scheme: "sip", User: "svc", Host: "127.0.0.1", Port: int(tg.gw.TLSAddr().Port()), UriParams: sip.HeaderParams{{K: "transport", V: "tls"}}}
	s, err := dua.Invite(ctx, target, offerSDP(m.LocalAddr().(*net.UDPAddr).AddrPort(), netip.AddrPort{}, 78, 0), sip.NewHeader("Content-Type", "application/sdp"))
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
	echoOnce(t, m, tg.mp.RTPAddr(), rtp(78, 1, "over tls"))
	if err := s.Bye(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "released", func() bool { return tg.gw.Calls() == 0 && tg.mp.Streams() == 0 && uas.byes.Load() == 1 })
}
