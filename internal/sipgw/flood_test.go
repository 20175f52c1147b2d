package sipgw

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/logging"
	"github.com/traverse-rtc/traverse/internal/logging/logtest"
	"github.com/traverse-rtc/traverse/internal/mediaproxy"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// evilInvite is an initial INVITE from user "evil" with an audio offer.
func evilInvite(i int, media netip.AddrPort) string {
	return sipMsg("INVITE", "sip:svc@127.0.0.1", fmt.Sprintf("flood-%d-%d", i, time.Now().UnixNano()),
		fmt.Sprintf("<sip:evil@127.0.0.4>;tag=e%d", i), "<sip:svc@127.0.0.1>", 1, string(offerSDP(media, netip.AddrPort{}, 0, 0)))
}

// floodInvites sends n INVITEs from p to tg, at most for d, and returns
// how many it sent. It sends in bursts of 25 and waits for the gateway to
// have read each burst: the kernel would drop the rest of a longer burst
// at the socket, and the test counts what the gateway did with each one.
func floodInvites(t *testing.T, tg *testGW, p *rawParty, n int, d time.Duration, media netip.AddrPort) int {
	t.Helper()
	end := time.Now().Add(d)
	base := tg.gw.Counters().Requests.Load()
	i := 0
	for i < n && time.Now().Before(end) {
		for j := 0; j < 25 && i < n; j++ {
			p.send(evilInvite(i, media))
			i++
		}
		testkit.WaitFor(t, 5*time.Second, "burst read", func() bool { return tg.gw.Counters().Requests.Load()-base == uint64(i) })
	}
	return i
}

// timedCall makes one call from uac and returns how long setup took.
func timedCall(t *testing.T, tg *testGW, uac *goUAC) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := udpOn(t, clientIP)
	start := time.Now()
	s, err := uac.call(ctx, tg.gw.Addr(), offerSDP(m.LocalAddr().(*net.UDPAddr).AddrPort(), netip.AddrPort{}, 5151, 0))
	if err != nil {
		t.Fatalf("second caller's call failed during the flood: %v", err)
	}
	took := time.Since(start)
	t.Cleanup(func() { s.Close() })
	echoOnce(t, m, tg.mp.RTPAddr(), rtp(5151, 1, "meanwhile"))
	if err := s.Bye(ctx); err != nil {
		t.Fatal(err)
	}
	return took
}

// TestInviteFloodPoolShare mounts issue 10 item 5 (SIP): one address floods
// INVITEs that the inside server leaves ringing, to drain the inside port
// pool (100 streams here). The source gets its share (20 streams) and 503
// beyond it; a second caller still gets a call through meanwhile; the
// ringing calls give their ports back at the setup deadline (CANCEL
// upstream).
func TestInviteFloodPoolShare(t *testing.T) {
	uas := startUAS(t, insideIP)
	uas.holdFrom.Store("evil")
	const share, flood = 20, 400
	tg := startGateway(t, uas.addr.String(), func(c *Config, m *mediaproxy.Config) {
		m.InsidePorts = freeRange(t, 200)
		c.RateLimit, c.RateBurst, c.CallRate, c.CallBurst = 1e6, 1e6, 1e6, 1e6 // the share alone
		c.SourceStreams, c.SetupTimeout = share, 2*time.Second
	})
	uac := startUAC(t, clientIP)
	atk := newRawParty(t, attackerIP, tg.gw.Addr())
	media := netip.AddrPortFrom(attackerIP, 40000)

	sent := floodInvites(t, tg, atk, flood, 3*time.Second, media)
	testkit.WaitFor(t, 5*time.Second, "flood handled", func() bool {
		c := tg.gw.Counters()
		return c.CallsStarted.Load()+c.SourceStreams.Load()+c.NoMedia.Load() == uint64(sent)
	})
	held, calls := tg.gw.SourceStreams(attackerIP), tg.gw.Calls()
	// Meanwhile, with the attacker's calls still ringing:
	took := timedCall(t, tg, uac)
	if held != share || calls != share {
		t.Fatalf("attacker holds %d streams in %d calls, want %d", held, calls, share)
	}
	t.Logf("%d INVITEs from one address: %d calls held (%d ports in use), %d refused 503; another caller's call set up in %v",
		sent, share, tg.mp.PortsInUse(), tg.gw.Counters().SourceStreams.Load(), took)
	// The setup deadline gives the ringing calls' ports back.
	testkit.WaitFor(t, 5*time.Second, "ringing calls released at the setup deadline", func() bool {
		return tg.gw.Calls() == 0 && tg.mp.Streams() == 0 && tg.gw.SourceStreams(attackerIP) == 0
	})
	if got := tg.gw.Counters().SetupTimeouts.Load(); got != share {
		t.Fatalf("%d setup timeouts, want %d", got, share)
	}
	testkit.WaitFor(t, 5*time.Second, "ringing calls cancelled upstream", func() bool { return uas.cancels.Load() == share })
}

// TestInviteFloodCallRate: one address floods INVITEs the inside server
// answers 200 and the attacker never ACKs. Its new-call rate (burst 20)
// refuses the rest (503, counted), a second caller gets through meanwhile,
// and the unacknowledged calls are hung up at the ACK deadline.
func TestInviteFloodCallRate(t *testing.T) {
	uas := startUAS(t, insideIP)
	const burst, flood = 20, 200
	tg := startGateway(t, uas.addr.String(), func(c *Config, _ *mediaproxy.Config) {
		c.RateLimit, c.RateBurst = 1e6, 1e6 // the call rate alone (default 5/s, burst 20)
		c.AckTimeout = 500 * time.Millisecond
	})
	uac := startUAC(t, clientIP)
	atk := newRawParty(t, attackerIP, tg.gw.Addr())
	start := time.Now()
	sent := floodInvites(t, tg, atk, flood, 3*time.Second, netip.AddrPortFrom(attackerIP, 40000))
	testkit.WaitFor(t, 5*time.Second, "flood handled", func() bool {
		c := tg.gw.Counters()
		return c.CallsStarted.Load()+c.CallRateLimited.Load() == uint64(sent)
	})
	// The bucket refilled at 5/s while the flood was being sent.
	allowed := burst + int(5*time.Since(start).Seconds()) + 1
	if started := int(tg.gw.Counters().CallsStarted.Load()); started < burst || started > allowed {
		t.Fatalf("%d calls started from one address, want %d-%d", started, burst, allowed)
	}
	took := timedCall(t, tg, uac)
	t.Logf("%d INVITEs: %d started, %d refused (call rate); another caller's call set up in %v",
		sent, tg.gw.Counters().CallsStarted.Load()-1, tg.gw.Counters().CallRateLimited.Load(), took)
	testkit.WaitFor(t, 5*time.Second, "unacknowledged calls hung up", func() bool {
		return tg.gw.Calls() == 0 && tg.mp.Streams() == 0
	})
	if to := tg.gw.Counters().SetupTimeouts.Load(); to != tg.gw.Counters().CallsStarted.Load()-1 {
		t.Fatalf("%d ACK timeouts for %d unacknowledged calls", to, tg.gw.Counters().CallsStarted.Load()-1)
	}
}

// TestRefusalsSentOnce mounts issue 10 item 6 (SIP): error answers to
// INVITEs that are never ACKed (483, 488) come once, not 11 times (Timer
// G); a burst of bad INVITEs from one source gets at most its answer burst;
// another source is still answered.
func TestRefusalsSentOnce(t *testing.T) {
	uas := startUAS(t, insideIP)
	tg := startGateway(t, uas.addr.String(), nil)
	gw := tg.gw.Addr()
	bad := "v=0\r\nnot sdp\r\n"
	for _, tc := range []struct {
		name, msg string
		want      int
	}{
		{"483", strings.Replace(invite("hops", ""), "Max-Forwards: 70", "Max-Forwards: 0", 1), 483},
		{"488", invite("badsdp", bad), 488},
	} {
		p := newRawParty(t, attackerIP, gw)
		msg := strings.ReplaceAll(tc.msg, "LOCAL", p.addr())
		p.send(msg)
		// Timer G would resend at 0.5, 1 and 2 s.
		n, size := p.count(2500 * time.Millisecond)
		if n != 1 {
			t.Fatalf("%s: %d answers to one unacknowledged INVITE, want 1", tc.name, n)
		}
		t.Logf("%s: one answer, %d bytes for a %d-byte request", tc.name, size, len(msg))
	}
	// The inside server's refusal (a 407 challenge) of an INVITE the
	// attacker never ACKs: relayed once as well.
	uas.refuse.Store(407)
	{
		p := newRawParty(t, attackerIP, gw)
		p.send(strings.ReplaceAll(invite("challenged", string(offerSDP(netip.AddrPortFrom(attackerIP, 40000), netip.AddrPort{}, 0, 0))), "LOCAL", p.addr()))
		var codes []int
		_ = p.conn.SetReadDeadline(time.Now().Add(2500 * time.Millisecond))
		buf := make([]byte, 65536)
		for {
			n, _, err := p.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			if c := statusOf(buf[:n]); c >= 200 {
				codes = append(codes, c)
			}
		}
		if len(codes) != 1 || codes[0] != 407 {
			t.Fatalf("relayed refusal: finals %v, want one 407", codes)
		}
		testkit.WaitFor(t, 2*time.Second, "refused call released", func() bool { return tg.gw.Calls() == 0 && tg.mp.Streams() == 0 })
	}
	uas.refuse.Store(0)
	invitesBefore := uas.invites.Load()
	// A burst: at most the answer burst (20) comes back.
	p := newRawParty(t, attackerIP, gw)
	const burst = 200
	base := tg.gw.Counters().Requests.Load()
	for i := 0; i < burst; {
		for j := 0; j < 25; j++ { // bursts the socket buffer holds
			p.send(strings.ReplaceAll(invite(fmt.Sprintf("burst%d", i), bad), "LOCAL", p.addr()))
			i++
		}
		testkit.WaitFor(t, 5*time.Second, "burst read", func() bool { return tg.gw.Counters().Requests.Load()-base == uint64(i) })
	}
	testkit.WaitFor(t, 5*time.Second, "burst handled", func() bool {
		c := tg.gw.Counters()
		return c.BadSDP.Load()+c.RateLimited.Load()+c.CallRateLimited.Load() == 1+burst
	})
	n, _ := p.count(300 * time.Millisecond)
	if n > 21 || n < 20 {
		t.Fatalf("%d answers to %d bad INVITEs from one source, want the answer burst (20)", n, burst)
	}
	if s := tg.gw.Counters().AnswersSuppressed.Load(); s != uint64(burst-n) {
		t.Fatalf("%d suppressed, want %d", s, burst-n)
	}
	// Another source is answered meanwhile.
	if got := rawSIP(t, gw, invite("other", bad)); got != 488 {
		t.Fatalf("another source got %d, want 488", got)
	}
	if uas.invites.Load() != invitesBefore {
		t.Fatal("refused INVITEs reached the inside server")
	}
}

// TestGarbageFlood mounts issue 10 item 7 (SIP): a flood of unparseable
// datagrams, among them 64 KB ones, to the SIP port. Each is counted by
// reason; the log (internal/logging's handler with its defaults, as every
// role of cmd/traverse logs through) stays bounded: a few sampled lines,
// each value cut to 256 bytes; a call still goes through meanwhile.
func TestGarbageFlood(t *testing.T) {
	uas := startUAS(t, insideIP)
	var logs logtest.Buffer
	tg := startGateway(t, uas.addr.String(), func(c *Config, _ *mediaproxy.Config) {
		log, err := logging.New(&logs, logging.Config{})
		if err != nil {
			t.Fatal(err)
		}
		c.Log = log
	})
	uac := startUAC(t, clientIP)
	atk := newRawParty(t, attackerIP, tg.gw.Addr())
	big := bytes.Repeat([]byte("\x01garbage\xff"), 64000/9)
	kinds := [][]byte{
		big,
		[]byte("\x16\x03\x01 not SIP at all\r\n\r\n"),
		[]byte("INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4"), // ends inside a line
	}
	start := time.Now()
	const rounds = 30
	var sent uint64
	var bytesSent int
	unparseable := func() uint64 {
		var n uint64
		for i := range numUnparse {
			n += tg.gw.Counters().Unparseable[i].Load()
		}
		return n
	}
	for r := 0; r < rounds; r++ {
		for _, k := range kinds {
			atk.send(string(k))
			sent++
			bytesSent += len(k)
		}
		// Paced so the socket buffer drops none: every one must be counted.
		testkit.WaitFor(t, 5*time.Second, "garbage counted", func() bool { return unparseable() == sent })
		if r == rounds/2 {
			timedCall(t, tg, uac)
		}
	}
	elapsed := time.Since(start)
	out := logs.String()
	var lines, parse int
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		lines++
		if len(l) > 1024 {
			t.Fatalf("log line of %d bytes: %.300s...", len(l), l)
		}
		if strings.Contains(l, parseFailureMsg) && !strings.Contains(l, logging.SummaryMessage) {
			parse++
		}
	}
	c := tg.gw.Counters()
	t.Logf("%d datagrams (%d bytes) of garbage in %v: %d log bytes in %d lines (%d parse failures logged); counted %d malformed, %d truncated",
		sent, bytesSent, elapsed, len(out), lines, parse, c.Unparseable[unparseMalformed].Load(), c.Unparseable[unparseTruncated].Load())
	// One message, at most DefaultBurst lines per started interval.
	if want := logging.DefaultBurst * (int(elapsed/logging.DefaultInterval) + 1); parse > want || len(out) > 1024*lines {
		t.Fatalf("%d parse failures logged in %d bytes, want at most %d lines", parse, len(out), want)
	}
	if c.Unparseable[unparseMalformed].Load() == 0 || c.Unparseable[unparseTruncated].Load() == 0 {
		t.Fatal("reasons not told apart")
	}
}
