package sipgw

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/traverse-rtc/traverse/internal/mediaproxy"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestSIPpOutsideCallsInside: SIPp uac_pcap outside -> gateway -> SIPp uas
// with RTP echo inside. Every call replays the same capture, so every call
// has the same SSRC and no a=ssrc: the latch and the source-address
// collision rule are what keep the calls apart. Zero loss: every packet
// SIPp sent reaches the inside server and its echo comes back out.
func TestSIPpOutsideCallsInside(t *testing.T) {
	dir := needSIPp(t)
	const calls = 4
	uasPort := freePort(t, insideIP)
	tg := startGateway(t, "127.0.0.2:"+itoa(uasPort), nil)
	uas := sipp(t, dir, "-sn", "uas", "-i", "127.0.0.2", "-p", itoa(uasPort), "-mi", "127.0.0.2",
		"-rtp_echo", "-mp", itoa(freePort(t, insideIP)), "-m", itoa(calls))
	waitBound(t, netip.AddrPortFrom(insideIP, uint16(uasPort)))
	uac := sipp(t, dir, "-sn", "uac_pcap", tg.gw.Addr().String(), "-i", "127.0.0.1", "-p", itoa(freePort(t, outsideIP)),
		"-mi", "127.0.0.1", "-mp", itoa(freePort(t, outsideIP)), "-m", itoa(calls), "-r", itoa(calls), "-l", itoa(calls))
	perCall := sippCalls(t, uac, uas)
	c := tg.mp.Counters()
	want := calls * perCall
	testkit.WaitFor(t, 5*time.Second, "all media forwarded both ways", func() bool {
		return c.RTPIn.Load() == want && c.RTPOut.Load() == want
	})
	if c.DropUnknownSSRC.Load() != 0 || c.Latched.Load() != calls {
		t.Errorf("drops %d, latched %d (want 0, %d)", c.DropUnknownSSRC.Load(), c.Latched.Load(), calls)
	}
	testkit.WaitFor(t, 5*time.Second, "sessions released", func() bool {
		return tg.gw.Calls() == 0 && tg.mp.Streams() == 0 && tg.mp.PortsInUse() == 0
	})
	t.Logf("%d calls, %d RTP packets each way, SSRC collisions resolved by source", calls, want)
}

const registerXML = `<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register alice">
  <send retrans="500"><![CDATA[
      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:alice@[remote_ip]>;tag=[pid]SIPpTag[call_number]
      To: <sip:alice@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:alice@[local_ip]:[field0]>
      Expires: 300
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
`

// TestSIPpInsideCallsRegisteredClient: an outside client registers through
// the gateway (relayed to the inside registrar); then the inside server
// (SIPp uac_pcap from an inside address) calls it through the gateway, and
// the client (SIPp uas, RTP echo) answers. Media crosses both ways.
func TestSIPpInsideCallsRegisteredClient(t *testing.T) {
	dir := needSIPp(t)
	// The inside registrar: answers every REGISTER 200.
	regPort := freePort(t, insideIP)
	ua, err := sipgo.NewUA()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sipgo.NewServer(ua)
	if err != nil {
		t.Fatal(err)
	}
	registered := make(chan string, 1)
	srv.OnRegister(func(req *sip.Request, tx sip.ServerTransaction) {
		res := sip.NewResponseFromRequest(req, 200, "OK", nil)
		if ct := req.Contact(); ct != nil {
			res.AppendHeader(sip.HeaderClone(ct))
			select {
			case registered <- ct.Address.String():
			default:
			}
		}
		_ = tx.Respond(res)
	})
	ctx, cancel := context.WithCancel(context.Background())
	srvDone := make(chan struct{})
	go func() { _ = srv.ListenAndServe(ctx, "udp", "127.0.0.2:"+itoa(regPort)); close(srvDone) }()
	t.Cleanup(func() { cancel(); ua.Close(); <-srvDone })

	tg := startGateway(t, "127.0.0.2:"+itoa(regPort), func(c *Config, m *mediaproxy.Config) {
		c.InsideNets = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
		// SIPp's uas only echoes: it never sends first, so the proxy
		// must send it the server's media before it latched.
		m.SendBeforeLatch = true
	})
	if err := os.WriteFile(filepath.Join(dir, "register.xml"), []byte(registerXML), 0o644); err != nil {
		t.Fatal(err)
	}
	uasPort := freePort(t, outsideIP)
	csv := filepath.Join(dir, "contact.csv")
	if err := os.WriteFile(csv, []byte("SEQUENTIAL\n"+itoa(uasPort)+";\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The client: a UAS that echoes RTP, registered by a one-shot UAC.
	uas := sipp(t, dir, "-sn", "uas", "-i", "127.0.0.1", "-p", itoa(uasPort), "-mi", "127.0.0.1",
		"-rtp_echo", "-mp", itoa(freePort(t, outsideIP)), "-m", "1")
	waitBound(t, netip.AddrPortFrom(outsideIP, uint16(uasPort)))
	reg := sipp(t, dir, "-sf", "register.xml", "-inf", csv, tg.gw.Addr().String(), "-i", "127.0.0.1",
		"-p", itoa(freePort(t, outsideIP)), "-m", "1")
	if err := reg(); err != nil {
		t.Fatalf("register: %v", err)
	}
	select {
	case c := <-registered:
		t.Logf("registrar saw Contact %s", c)
	case <-time.After(5 * time.Second):
		t.Fatal("REGISTER not relayed")
	}
	if tg.gw.Registrations() != 1 {
		t.Fatal("no binding")
	}
	uac := sipp(t, dir, "-sn", "uac_pcap", tg.gw.Addr().String(), "-s", "alice", "-i", "127.0.0.2",
		"-p", itoa(freePort(t, insideIP)), "-mi", "127.0.0.2", "-mp", itoa(freePort(t, insideIP)), "-m", "1")
	perCall := sippCalls(t, uac, uas)
	c := tg.mp.Counters()
	testkit.WaitFor(t, 5*time.Second, "all media forwarded both ways", func() bool {
		return c.RTPOut.Load() == perCall && c.RTPIn.Load() == perCall
	})
	testkit.WaitFor(t, 5*time.Second, "sessions released", func() bool { return tg.gw.Calls() == 0 && tg.mp.Streams() == 0 })
}

// sippCalls waits for the calling and the answering SIPp to finish their
// scenarios, and returns the RTP packets uac_pcap plays in each direction
// per call (the G.711 capture, then the RFC 2833 DTMF one).
func sippCalls(t *testing.T, uac, uas func() error) uint64 {
	t.Helper()
	if err := uac(); err != nil {
		t.Fatalf("uac: %v", err)
	}
	if err := uas(); err != nil {
		t.Fatalf("uas: %v", err)
	}
	return pcapPackets(t, "/usr/share/sip-tester/g711a.pcap") + pcapPackets(t, "/usr/share/sip-tester/dtmf_2833_1.pcap")
}
