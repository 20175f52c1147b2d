package sipgw

import (
	"context"
	"encoding/binary"
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

func rtp(ssrc uint32, seq uint16, tag string) []byte {
	p := make([]byte, 12, 12+len(tag))
	p[0] = 0x80
	binary.BigEndian.PutUint16(p[2:], seq)
	binary.BigEndian.PutUint32(p[8:], ssrc)
	return append(p, tag...)
}

// udpOn binds a UDP socket on ip for the duration of the test.
func udpOn(t *testing.T, ip netip.Addr) *net.UDPConn {
	t.Helper()
	return testkit.ListenUDP(t, netip.AddrPortFrom(ip, 0))
}

func echoOnce(t *testing.T, c *net.UDPConn, to netip.AddrPort, p []byte) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(p, to); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != string(p) || from != to {
		t.Fatalf("echo: %q from %v: %v", buf[:n], from, err)
	}
}

// TestCallUpdateBye: a call with a declared SSRC; the SDP each side sees
// points at the gateway; an UPDATE moving the client's media re-latches it;
// BYE releases everything.
func TestCallUpdateBye(t *testing.T) {
	uas, tg, uac := startTrio(t, nil)
	ctx := callCtx(t)
	s, m1 := callFrom(t, tg, uac, 4242)
	inBody := uas.body()
	if !strings.Contains(inBody, "c=IN IP4 127.0.0.2") || strings.Contains(inBody, "127.0.0.3") {
		t.Fatalf("inside-bound SDP not rewritten:\n%s", inBody)
	}
	outBody := string(s.InviteResponse.Body())
	fixed := tg.mp.RTPAddr()
	if !strings.Contains(outBody, "c=IN IP4 127.0.0.1") || !strings.Contains(outBody, "m=audio "+itoa(int(fixed.Port()))) {
		t.Fatalf("outside-bound SDP not rewritten:\n%s", outBody)
	}
	if tg.mp.RTCPAddr().Port() != fixed.Port()+1 && !strings.Contains(outBody, "a=rtcp:"+itoa(int(tg.mp.RTCPAddr().Port()))) {
		t.Fatalf("RTCP port not advertised:\n%s", outBody)
	}
	echoOnce(t, m1, fixed, rtp(4242, 1, "one"))

	// UPDATE: the client moves its media to another socket.
	m2 := udpOn(t, clientIP)
	up := sip.NewRequest(sip.UPDATE, s.InviteResponse.Contact().Address)
	up.SetBody(offerSDP(m2.LocalAddr().(*net.UDPAddr).AddrPort(), netip.AddrPort{}, 4242, 0))
	up.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	res, err := s.Do(ctx, up)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("UPDATE: %v %v", res, err)
	}
	if uas.updates.Load() != 1 || !strings.Contains(string(res.Body()), "m=audio "+itoa(int(fixed.Port()))) {
		t.Fatal("UPDATE did not traverse the gateway with SDP rewritten")
	}
	echoOnce(t, m2, fixed, rtp(4242, 2, "two"))

	if err := s.Bye(ctx); err != nil {
		t.Fatal(err)
	}
	if uas.byes.Load() != 1 {
		t.Fatal("BYE not relayed")
	}
	testkit.WaitFor(t, 5*time.Second, "released", func() bool { return tg.gw.Calls() == 0 && tg.mp.Streams() == 0 && tg.mp.PortsInUse() == 0 })
}

// TestCancel: the caller cancels while the server rings; the server sees
// the CANCEL, the caller gets 487 and nothing is left.
func TestCancel(t *testing.T) {
	uas := startUAS(t, insideIP)
	uas.hold.Store(true)
	tg := startGateway(t, uas.addr.String(), nil)
	uac := startUAC(t, clientIP)
	m := udpOn(t, clientIP)
	s, err := uac.dua.Invite(context.Background(), sip.Uri{Scheme: "sip", User: "svc", Host: "127.0.0.1", Port: int(tg.gw.Addr().Port())},
		offerSDP(m.LocalAddr().(*net.UDPAddr).AddrPort(), netip.AddrPort{}, 0, 0), sip.NewHeader("Content-Type", "application/sdp"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var got int
	errc := make(chan error, 1)
	go func() {
		errc <- s.WaitAnswer(ctx, sipgo.AnswerOptions{OnResponse: func(r *sip.Response) error {
			got = r.StatusCode
			if r.StatusCode == 180 {
				cancel()
			}
			return nil
		}})
	}()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatalf("call answered (last %d) though cancelled", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitAnswer did not return after CANCEL")
	}
	testkit.WaitFor(t, 5*time.Second, "CANCEL relayed to the server", func() bool { return uas.cancels.Load() == 1 })
	testkit.WaitFor(t, 5*time.Second, "released", func() bool { return tg.gw.Calls() == 0 && tg.mp.Streams() == 0 })
}

// rawSIP sends one datagram to the gateway and returns the status code of
// the first response, or 0 when none comes.
func rawSIP(t *testing.T, gw netip.AddrPort, msg string) int {
	t.Helper()
	c := udpOn(t, clientIP)
	msg = strings.ReplaceAll(msg, "LOCAL", c.LocalAddr().String())
	if _, err := c.WriteToUDPAddrPort([]byte(msg), gw); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 4096)
	for {
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return 0
		}
		line, _, _ := strings.Cut(string(buf[:n]), "\r\n")
		f := strings.Fields(line)
		if len(f) >= 2 && f[1] != "100" {
			var code int
			for _, ch := range f[1] {
				code = code*10 + int(ch-'0')
			}
			return code
		}
	}
}

func invite(callID, body string) string {
	return "INVITE sip:svc@127.0.0.1 SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP LOCAL;branch=z9hG4bK" + callID + "\r\n" +
		"From: <sip:a@127.0.0.3>;tag=1\r\nTo: <sip:svc@127.0.0.1>\r\n" +
		"Call-ID: " + callID + "\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n" +
		"Contact: <sip:a@LOCAL>\r\nContent-Type: application/sdp\r\n" +
		"Content-Length: " + itoa(len(body)) + "\r\n\r\n" + body
}

// TestMalformed: bad SDP gets 488, a request without From gets 400, and
// neither leaves a session or reaches the server.
func TestMalformed(t *testing.T) {
	uas := startUAS(t, insideIP)
	tg := startGateway(t, uas.addr.String(), nil)
	tests := []struct {
		name string
		msg  string
		want int
	}{
		{"sdp garbage", invite("bad1", "v=0\r\nthis is not sdp\r\n"), 488},
		{"sdp no c=", invite("bad2", "v=0\r\no=a 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"), 488},
		{"sdp hostname", invite("bad3", "v=0\r\no=a 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 example.com\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"), 488},
		{"no From", strings.Replace(invite("bad4", ""), "From: <sip:a@127.0.0.3>;tag=1\r\n", "", 1), 400},
		{"in-dialog unknown call", strings.Replace(invite("bad5", ""), "To: <sip:svc@127.0.0.1>", "To: <sip:svc@127.0.0.1>;tag=x", 1), 481},
	}
	for _, tt := range tests {
		if got := rawSIP(t, tg.gw.Addr(), tt.msg); got != tt.want {
			t.Errorf("%s: got %d, want %d", tt.name, got, tt.want)
		}
	}
	if uas.invites.Load() != 0 || tg.gw.Calls() != 0 || tg.mp.Streams() != 0 || tg.mp.PortsInUse() != 0 {
		t.Fatalf("half-made session: %d invites upstream, %d calls, %d streams", uas.invites.Load(), tg.gw.Calls(), tg.mp.Streams())
	}
	if tg.gw.Counters().BadSDP.Load() != 3 || tg.gw.Counters().BadRequest.Load() != 1 {
		t.Fatalf("counters: %d bad SDP, %d bad requests", tg.gw.Counters().BadSDP.Load(), tg.gw.Counters().BadRequest.Load())
	}
}

// TestRateLimit: a flood of INVITEs from one source gets 503 beyond the
// burst.
func TestRateLimit(t *testing.T) {
	uas := startUAS(t, insideIP)
	tg := startGateway(t, uas.addr.String(), func(c *Config, _ *mediaproxy.Config) { c.RateLimit, c.RateBurst = 0.001, 2 })
	codes := map[int]int{}
	for i := 0; i < 5; i++ {
		codes[rawSIP(t, tg.gw.Addr(), invite("flood"+itoa(i), "v=0\r\nbad\r\n"))]++
	}
	if codes[503] != 3 || tg.gw.Counters().RateLimited.Load() != 3 {
		t.Fatalf("responses %v, want three 503", codes)
	}
}

// TestMediaTimeoutEndsCall: a call whose media never flows ends after the
// setup timeout: the gateway sends BYE to both parties and forgets it.
func TestMediaTimeoutEndsCall(t *testing.T) {
	uas, tg, uac := startTrio(t, func(_ *Config, m *mediaproxy.Config) {
		m.MediaTimeout, m.SetupTimeout, m.Tick = 200*time.Millisecond, 300*time.Millisecond, 20*time.Millisecond
	})
	callFrom(t, tg, uac, 0)
	testkit.WaitFor(t, 5*time.Second, "call ended by media timeout", func() bool { return tg.gw.Calls() == 0 && tg.mp.Streams() == 0 })
	if tg.mp.Counters().Timeouts.Load() != 1 {
		t.Fatal("timeout not counted")
	}
	testkit.WaitFor(t, 5*time.Second, "BYE sent to both parties", func() bool { return uas.byes.Load() == 1 && uac.byes.Load() == 1 })
}

// TestNATedClient: the client's SDP carries a private address it cannot be
// reached at; its media comes from the address its signaling comes from,
// and the gateway latches that.
func TestNATedClient(t *testing.T) {
	_, tg, uac := startTrio(t, nil)
	ctx := callCtx(t)
	m := udpOn(t, clientIP)
	private := netip.AddrPortFrom(netip.MustParseAddr("10.99.0.7"), m.LocalAddr().(*net.UDPAddr).AddrPort().Port())
	s, err := uac.call(ctx, tg.gw.Addr(), offerSDP(private, netip.AddrPort{}, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	echoOnce(t, m, tg.mp.RTPAddr(), rtp(31337, 1, "behind a NAT"))
	if err := s.Bye(ctx); err != nil {
		t.Fatal(err)
	}
}
