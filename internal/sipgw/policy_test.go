package sipgw

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/traverse-rtc/traverse/internal/addrpolicy"
	"github.com/traverse-rtc/traverse/internal/mediaproxy"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// These tests mount the media attacks of issue 10 item 2 through the whole
// gateway: an outside client (127.0.0.3) names media addresses that are not
// its own, and the inside server sends media before the client does.

var mLine = regexp.MustCompile(`m=audio (\d+)`)

// insidePort is the stream's inside RTP port, from the SDP the server got.
func insidePort(t *testing.T, body string) uint16 {
	t.Helper()
	m := mLine.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no m=audio in inside SDP:\n%s", body)
	}
	n, _ := strconv.Atoi(m[1])
	return uint16(n)
}

// pbxSends sends n packets to the stream's inside port (RTP, or RTCP on
// the port above) from a socket on the server's address, as a PBX playing
// an announcement does before the caller said anything.
func pbxSends(t *testing.T, port uint16, n int, rtcp bool) {
	t.Helper()
	c := udpOn(t, insideIP)
	to := netip.AddrPortFrom(insideIP, port)
	for i := 0; i < n; i++ {
		b := rtp(0xabcd, uint16(i), "pbx")
		if rtcp {
			b = []byte{0x80, 200, 0, 1, 0, 0, 0xab, 0xcd}
			to = netip.AddrPortFrom(insideIP, port+1)
		}
		if _, err := c.WriteToUDPAddrPort(b, to); err != nil {
			t.Fatal(err)
		}
	}
}

// receive reads n packets at c.
func receive(t *testing.T, c *net.UDPConn, n int, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	for i := 0; i < n; i++ {
		if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatalf("%s: got %d of %d: %v", what, i, n, err)
		}
	}
}

func addr(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

// offerAt is an audio offer whose c= is ip and whose m= port is port, with
// extra media-level lines.
func offerAt(ip netip.Addr, port uint16, extra string) []byte {
	return []byte(fmt.Sprintf("v=0\r\no=uac 1 1 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n%s", ip, port, extra))
}

// onlyClient is the lab policy of these tests: the client's address is
// allowed, every other loopback address refused as in production.
func onlyClient(_ *Config, m *mediaproxy.Config) {
	m.Policy = addrpolicy.Filter{Allow: []netip.Prefix{netip.PrefixFrom(clientIP, 32)}}
}

// TestMediaPolicyOutsideAddresses: c= 127.0.0.2 (a listening victim on the
// inside host), 169.254.169.254, 100.64.0.1 and 0.0.0.0 receive no server
// media, whether the proxy waits for the latch (the default) or sends
// before it; the refused address is counted and the call still carries
// media both ways once the client sends its own.
func TestMediaPolicyOutsideAddresses(t *testing.T) {
	for _, early := range []bool{false, true} {
		t.Run(fmt.Sprintf("SendBeforeLatch=%v", early), func(t *testing.T) {
			uas := startUAS(t, insideIP)
			tg := startGateway(t, uas.addr.String(), func(c *Config, m *mediaproxy.Config) {
				onlyClient(c, m)
				m.SendBeforeLatch = early
			})
			uac := startUAC(t, clientIP)
			victim := udpOn(t, insideIP)
			mc := tg.mp.Counters()
			for i, target := range []string{"127.0.0.2", "169.254.169.254", "100.64.0.1", "0.0.0.0"} {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				m := udpOn(t, clientIP)
				port := addr(m).Port()
				if i == 0 {
					port = addr(victim).Port()
					m.Close()
					var err error
					// The client's own socket on the victim's port number: the
					// signaling address the gateway falls back to.
					if m, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(clientIP, port))); err != nil {
						t.Skipf("port %d taken on %v", port, clientIP)
					}
					t.Cleanup(func() { m.Close() })
				}
				refused := mc.RefusedPolicy.Load()
				s, err := uac.call(ctx, tg.gw.Addr(), offerAt(netip.MustParseAddr(target), port, ""))
				if err != nil {
					t.Fatalf("c=%s: call: %v", target, err)
				}
				if mc.RefusedPolicy.Load() != refused+1 {
					t.Errorf("c=%s: %d refusals counted, want 1", target, mc.RefusedPolicy.Load()-refused)
				}
				held, out, werr := mc.DropNotLatched.Load(), mc.RTPOut.Load(), mc.DropWriteError.Load()
				pbxSends(t, insidePort(t, uas.body()), 5, false)
				if early {
					// Sent, but to the address the client signals from.
					receive(t, m, 5, "c="+target+": the client's signaling address")
				} else {
					testkit.WaitFor(t, 5*time.Second, "server media held", func() bool { return mc.DropNotLatched.Load() == held+5 })
					if mc.RTPOut.Load() != out {
						t.Fatalf("c=%s: %d packets sent before the client's media", target, mc.RTPOut.Load()-out)
					}
				}
				if mc.DropWriteError.Load() != werr {
					t.Fatalf("c=%s: sent toward the refused address (%d write errors)", target, mc.DropWriteError.Load()-werr)
				}
				// A normal call: the client's media latches and is echoed.
				echoOnce(t, m, tg.mp.RTPAddr(), rtp(uint32(5000+i), 1, "two-way"))
				if err := s.Bye(ctx); err != nil {
					t.Fatal(err)
				}
				s.Close()
				cancel()
			}
			testkit.Silent(t, victim, "victim at 127.0.0.2")
		})
	}
}

// TestMediaPolicyRTCPAddress: a=rtcp naming another host (a listening
// victim on 127.0.0.2, RFC 1918 10.0.0.1, multicast 224.0.0.1) is refused;
// the server's RTCP goes to the client's latched IP at the signaled RTCP
// port.
func TestMediaPolicyRTCPAddress(t *testing.T) {
	uas, tg, uac := startTrio(t, onlyClient)
	mc := tg.mp.Counters()
	for i, target := range []string{"127.0.0.2", "10.0.0.1", "224.0.0.1"} {
		victim := udpOn(t, insideIP)
		rc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(clientIP, addr(victim).Port())))
		if err != nil {
			t.Skipf("port %d taken on %v", addr(victim).Port(), clientIP)
		}
		t.Cleanup(func() { rc.Close() })
		m := udpOn(t, clientIP)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		refused := mc.RefusedPolicy.Load()
		s, err := uac.call(ctx, tg.gw.Addr(), offerAt(clientIP, addr(m).Port(), fmt.Sprintf("a=rtcp:%d IN IP4 %s\r\n", addr(rc).Port(), target)))
		if err != nil {
			t.Fatalf("a=rtcp %s: call: %v", target, err)
		}
		if mc.RefusedPolicy.Load() != refused+1 {
			t.Errorf("a=rtcp %s: %d refusals counted, want 1", target, mc.RefusedPolicy.Load()-refused)
		}
		echoOnce(t, m, tg.mp.RTPAddr(), rtp(uint32(6000+i), 1, "latch"))
		pbxSends(t, insidePort(t, uas.body()), 3, true)
		receive(t, rc, 3, "a=rtcp "+target+": server RTCP at the client's own IP")
		testkit.Silent(t, victim, "a=rtcp "+target+": victim on 127.0.0.2")
		if err := s.Bye(ctx); err != nil {
			t.Fatal(err)
		}
		s.Close()
		cancel()
	}
}

// TestMediaPolicyLoop: the client names the gateway's own RTP port and the
// server echoes. Before, 5 packets became ~230,000 forwards each way in
// 3 s; they must stay bounded, with the proxy in its most permissive
// mode (loopback allowed, sending before the latch).
func TestMediaPolicyLoop(t *testing.T) {
	uas, tg, uac := startTrio(t, func(_ *Config, m *mediaproxy.Config) { m.SendBeforeLatch = true })
	ctx := callCtx(t)
	fixed := tg.mp.RTPAddr()
	s, err := uac.call(ctx, tg.gw.Addr(), offerAt(fixed.Addr(), fixed.Port(), ""))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mc := tg.mp.Counters()
	if mc.RefusedOwn.Load() != 1 {
		t.Errorf("%d own-address refusals, want 1", mc.RefusedOwn.Load())
	}
	pbxSends(t, insidePort(t, uas.body()), 5, false)
	testkit.WaitFor(t, 5*time.Second, "the 5 packets handled", func() bool { return mc.RTPOut.Load()+mc.DropNoPeer.Load()+mc.DropNotLatched.Load() >= 5 })
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if n := mc.RTPIn.Load() + mc.RTPOut.Load(); n >= 50 {
			t.Fatalf("loop: %d forwards for 5 packets", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("5 packets: %d forwards in, %d out", mc.RTPIn.Load(), mc.RTPOut.Load())
}

// TestMediaPolicyUpdate: an UPDATE or re-INVITE moving an established
// call's media to a refused address (the inside host, the metadata address) sends nothing
// there; the server's media waits until the client's media arrives again.
func TestMediaPolicyUpdate(t *testing.T) {
	uas, tg, uac := startTrio(t, onlyClient)
	ctx := callCtx(t)
	m := udpOn(t, clientIP)
	s, err := uac.call(ctx, tg.gw.Addr(), offerAt(clientIP, addr(m).Port(), ""))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	echoOnce(t, m, tg.mp.RTPAddr(), rtp(7000, 1, "before"))
	victim := udpOn(t, insideIP)
	mc := tg.mp.Counters()
	for i, x := range []struct {
		method sip.RequestMethod
		target netip.AddrPort
	}{
		{sip.UPDATE, addr(victim)},
		{sip.UPDATE, netip.MustParseAddrPort("169.254.169.254:80")},
		{sip.INVITE, addr(victim)},
		{sip.INVITE, netip.MustParseAddrPort("100.64.0.1:5004")},
	} {
		target := x.target
		refused, held := mc.RefusedPolicy.Load(), mc.DropNotLatched.Load()
		up := sip.NewRequest(x.method, s.InviteResponse.Contact().Address)
		up.SetBody(offerAt(target.Addr(), target.Port(), ""))
		up.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
		res, err := s.Do(ctx, up)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("%s to %v: %v %v", x.method, target, res, err)
		}
		if x.method == sip.INVITE {
			if err := s.WriteRequest(sip.NewRequest(sip.ACK, up.Recipient)); err != nil {
				t.Fatal(err)
			}
		}
		if mc.RefusedPolicy.Load() != refused+1 {
			t.Errorf("%s to %v: %d refusals, want 1", x.method, target, mc.RefusedPolicy.Load()-refused)
		}
		if strings.Contains(uas.body(), target.Addr().String()) && target.Addr() != insideIP {
			t.Errorf("refused address reached the server:\n%s", uas.body())
		}
		pbxSends(t, insidePort(t, uas.body()), 5, false)
		testkit.WaitFor(t, 5*time.Second, "server media held", func() bool { return mc.DropNotLatched.Load() == held+5 })
		echoOnce(t, m, tg.mp.RTPAddr(), rtp(7000, uint16(2+i), "after"))
	}
	testkit.Silent(t, victim, "victim on 127.0.0.2")
}

// TestMediaPolicyAllRefused: when neither the SDP's address nor the
// address the signaling came from may receive media, the offer gets 488
// and nothing reaches the server; an allowed c= from that client works.
func TestMediaPolicyAllRefused(t *testing.T) {
	uas, tg, uac := startTrio(t, func(_ *Config, m *mediaproxy.Config) {
		m.Policy = addrpolicy.Filter{Loopback: true, Deny: []netip.Prefix{netip.PrefixFrom(clientIP, 32)}}
	})
	ctx := callCtx(t)
	_, err := uac.call(ctx, tg.gw.Addr(), offerAt(netip.MustParseAddr("169.254.169.254"), 80, ""))
	var re *sipgo.ErrDialogResponse
	if !errors.As(err, &re) || re.Res.StatusCode != 488 {
		t.Fatalf("got %v, want 488", err)
	}
	if uas.invites.Load() != 0 || tg.mp.Streams() != 0 || tg.gw.Calls() != 0 {
		t.Fatalf("refused offer left %d invites upstream, %d streams, %d calls", uas.invites.Load(), tg.mp.Streams(), tg.gw.Calls())
	}
	s, err := uac.call(ctx, tg.gw.Addr(), offerAt(netip.MustParseAddr("127.0.0.4"), 4000, ""))
	if err != nil {
		t.Fatalf("allowed c=: %v", err)
	}
	s.Close()
}

// FuzzOutsideMedia: whatever SDP and signaling address an outside party
// sends, every address the gateway hands to the media proxy passes the
// destination policy, and a refused stream carries no address.
func FuzzOutsideMedia(f *testing.F) {
	for _, s := range sdpSeeds {
		f.Add([]byte(s), []byte{203, 0, 113, 5})
	}
	f.Add(offerAt(netip.MustParseAddr("169.254.169.254"), 80, "a=rtcp:9 IN IP4 224.0.0.1\r\n"), []byte{127, 0, 0, 3})
	f.Add(offerAt(netip.MustParseAddr("10.0.0.1"), 7000, "a=rtcp:7001 IN IP4 0.0.0.0\r\n"), []byte{198, 51, 100, 7})
	mp, err := mediaproxy.New(mediaproxy.Config{
		RTP: netip.MustParseAddrPort("127.0.0.1:0"), RTCP: netip.MustParseAddrPort("127.0.0.1:0"),
		InsideIP: insideIP, InsidePorts: mediaproxy.PortRange{Low: 45200, High: 45300},
		Policy: addrpolicy.Filter{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.3/32")}},
	})
	if err != nil {
		f.Skip(err)
	}
	f.Cleanup(func() { mp.Close() })
	f.Fuzz(func(t *testing.T, body, sigb []byte) {
		_, ss, err := parseSDP(body)
		if err != nil {
			return
		}
		sig, _ := netip.AddrFromSlice(sigb)
		eps, err := outsideMedia(mp, sig, ss)
		if err != nil {
			return
		}
		for i, e := range eps {
			if ss[i].disabled || e.refused {
				if e.rtp.IsValid() || e.rtcp.IsValid() {
					t.Fatalf("stream %d refused but carries %v %v", i, e.rtp, e.rtcp)
				}
				continue
			}
			if err := mp.CheckOutside(e.rtp); err != nil {
				t.Fatalf("stream %d: RTP %v: %v", i, e.rtp, err)
			}
			if e.rtcp.IsValid() && mp.CheckOutside(e.rtcp) != nil {
				t.Fatalf("stream %d: RTCP %v refused", i, e.rtcp)
			}
		}
	})
}

// TestMediaPolicyLateOfferACK: in a late-offer call (an INVITE without
// SDP, the server offering in its 2xx), the client's answer travels in the
// ACK. An answer naming a refused address must not reach the server
// unrewritten: the ACK is relayed without it, and the refusal counted.
func TestMediaPolicyLateOfferACK(t *testing.T) {
	uas := startUAS(t, insideIP)
	// The production policy: loopback refused, so the fallback to the
	// signaling address (127.0.0.3) is refused as well.
	tg := startGateway(t, uas.addr.String(), func(_ *Config, m *mediaproxy.Config) { m.Policy = addrpolicy.Filter{} })
	uac := startUAC(t, clientIP)
	ctx := callCtx(t)
	s, err := uac.dua.Invite(ctx, sip.Uri{Scheme: "sip", User: "svc", Host: tg.gw.Addr().Addr().String(), Port: int(tg.gw.Addr().Port())}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.WaitAnswer(ctx, sipgo.AnswerOptions{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(s.InviteResponse.Body()), "m=audio") {
		t.Fatalf("no offer in the 2xx:\n%s", s.InviteResponse.Body())
	}
	bad := netip.MustParseAddr("169.254.169.254")
	target := s.InviteRequest.Recipient
	if c := s.InviteResponse.Contact(); c != nil {
		target = c.Address
	}
	ack := sip.NewRequest(sip.ACK, *target.Clone())
	ack.SetBody(offerAt(bad, 4000, ""))
	ack.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	refused := tg.mp.Counters().RefusedPolicy.Load()
	if err := s.WriteAck(ctx, ack); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "ACK at the server", func() bool { return uas.acks.Load() == 1 })
	uas.mu.Lock()
	body := uas.ackBody
	uas.mu.Unlock()
	if strings.Contains(body, bad.String()) {
		t.Fatalf("the server got the refused address in the ACK:\n%s", body)
	}
	if got := tg.mp.Counters().RefusedPolicy.Load(); got <= refused {
		t.Errorf("refusals counted: %d, want more than %d", got, refused)
	}
}
