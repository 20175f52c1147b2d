package sipgw

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/traverse-rtc/traverse/internal/testkit"
)

// attackerIP is another outside address: the attacker's.
var attackerIP = netip.MustParseAddr("127.0.0.4")

// rawParty is an outside party speaking SIP by hand over UDP.
type rawParty struct {
	t    *testing.T
	conn *net.UDPConn
	gw   netip.AddrPort
	n    int
}

func newRawParty(t *testing.T, ip netip.Addr, gw netip.AddrPort) *rawParty {
	return &rawParty{t: t, conn: udpOn(t, ip), gw: gw}
}

func (p *rawParty) addr() string { return p.conn.LocalAddr().String() }

// send writes msg with LOCAL replaced by the party's address and BRANCH by
// a fresh branch.
func (p *rawParty) send(msg string) {
	p.t.Helper()
	p.n++
	msg = strings.ReplaceAll(msg, "LOCAL", p.addr())
	msg = strings.ReplaceAll(msg, "BRANCH", fmt.Sprintf("z9hG4bKraw%d%d", time.Now().UnixNano(), p.n))
	if _, err := p.conn.WriteToUDPAddrPort([]byte(msg), p.gw); err != nil {
		p.t.Fatal(err)
	}
}

// code returns the status of the next final response, 0 when none comes
// within d.
func (p *rawParty) code(d time.Duration) int {
	_ = p.conn.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 65536)
	for {
		n, _, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return 0
		}
		if c := statusOf(buf[:n]); c >= 200 {
			return c
		}
	}
}

// count reads every datagram that comes within d and returns how many and
// their bytes.
func (p *rawParty) count(d time.Duration) (n, bytes int) {
	deadline := time.Now().Add(d)
	buf := make([]byte, 65536)
	for {
		_ = p.conn.SetReadDeadline(deadline)
		m, _, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return n, bytes
		}
		n++
		bytes += m
	}
}

func statusOf(b []byte) int {
	line, _, _ := strings.Cut(string(b), "\r\n")
	f := strings.Fields(line)
	if len(f) < 2 || f[0] != "SIP/2.0" {
		return 0
	}
	var c int
	for _, ch := range f[1] {
		c = c*10 + int(ch-'0')
	}
	return c
}

// sipMsg builds a request. hdrs are extra header lines.
func sipMsg(method, ruri, callID, from, to string, cseq int, body string, hdrs ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s SIP/2.0\r\nVia: SIP/2.0/UDP LOCAL;branch=BRANCH\r\n", method, ruri)
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: %d %s\r\nMax-Forwards: 70\r\nContact: <sip:x@LOCAL>\r\n", from, to, callID, cseq, method)
	for _, h := range hdrs {
		b.WriteString(h + "\r\n")
	}
	if body != "" {
		b.WriteString("Content-Type: application/sdp\r\n")
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body), body)
	return b.String()
}

// victimCall sets up a call from a Go UAC at clientIP with a declared
// SSRC, checks its media crosses, and returns it with its media socket.
func victimCall(t *testing.T, tg *testGW, uac *goUAC) (*sipgo.DialogClientSession, *net.UDPConn) {
	t.Helper()
	s, m := callFrom(t, tg, uac, 4242)
	echoOnce(t, m, tg.mp.RTPAddr(), rtp(4242, 1, "victim"))
	return s, m
}

// mediaIntact checks that the victim's media still goes to the victim and
// back (through the inside server's echo), and that the attacker's media
// socket got nothing meanwhile.
func mediaIntact(t *testing.T, tg *testGW, victim, attacker *net.UDPConn, seq uint16) {
	t.Helper()
	echoOnce(t, victim, tg.mp.RTPAddr(), rtp(4242, seq, "victim"))
	_ = attacker.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 2048)
	if n, from, err := attacker.ReadFromUDPAddrPort(buf); err == nil {
		t.Fatalf("attacker's media socket received %q from %v", buf[:n], from)
	}
}

// TestDialogHijack mounts issue 10 item 1: a party at another outside
// address sends requests carrying a victim's Call-ID (with made-up tags, and
// with the victim's own tags): re-INVITE and a new INVITE with the
// attacker's SDP and SSRC, ACK with SDP, BYE. Every one is refused 481 or
// dropped without touching the call: the victim's media keeps flowing to the
// victim, the attacker receives none, its RTP does not reach the inside
// server, and the call is still held.
func TestDialogHijack(t *testing.T) {
	uas, tg, uac := startTrio(t, nil)
	s, victim := victimCall(t, tg, uac)
	callID := s.InviteRequest.CallID().Value()
	ft, tt := fromTag(s.InviteRequest), toTagOf(s.InviteResponse)
	gw := tg.gw.Addr()
	ruri := "sip:uas@" + uas.addr.String()
	route := "Route: <sip:" + gw.String() + ";lr>"

	atk := newRawParty(t, attackerIP, gw)
	atkMedia := udpOn(t, attackerIP)
	evilSDP := string(offerSDP(atkMedia.LocalAddr().(*net.UDPAddr).AddrPort(), netip.AddrPort{}, 666, 0))
	from := "<sip:uac@127.0.0.3>;tag=" + ft
	to := "<sip:svc@" + gw.Addr().String() + ">"
	invitesBefore := uas.invites.Load()

	seq := uint16(10)
	for _, tc := range []struct {
		name, msg string
		want      int // 0: no answer expected (ACK)
	}{
		{"re-INVITE, made-up To-tag", sipMsg("INVITE", ruri, callID, from, to+";tag=madeup", 100, evilSDP, route), 481},
		{"re-INVITE, victim's tags", sipMsg("INVITE", ruri, callID, from, to+";tag="+tt, 101, evilSDP, route), 481},
		{"new INVITE, victim's Call-ID", sipMsg("INVITE", "sip:svc@"+gw.String(), callID, from, to, 102, evilSDP), 481},
		{"UPDATE, victim's tags", sipMsg("UPDATE", ruri, callID, from, to+";tag="+tt, 103, evilSDP, route), 481},
		{"ACK with SDP, victim's tags", sipMsg("ACK", ruri, callID, from, to+";tag="+tt, 1, evilSDP, route), 0},
		{"BYE, made-up To-tag", sipMsg("BYE", ruri, callID, from, to+";tag=madeup", 104, "", route), 481},
		{"BYE, victim's tags", sipMsg("BYE", ruri, callID, from, to+";tag="+tt, 105, "", route), 481},
	} {
		mismatches := tg.gw.Counters().DialogMismatch.Load()
		atk.send(tc.msg)
		if tc.want != 0 {
			if got := atk.code(2 * time.Second); got != tc.want {
				t.Fatalf("%s: answered %d, want %d", tc.name, got, tc.want)
			}
		}
		// The attacker also sends RTP with its own SSRC from the address
		// its SDP named: it must not reach the inside server.
		drops := tg.mp.Counters().DropUnknownSSRC.Load()
		if _, err := atkMedia.WriteToUDPAddrPort(rtp(666, seq, "evil"), tg.mp.RTPAddr()); err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, 2*time.Second, tc.name+": attacker RTP dropped", func() bool { return tg.mp.Counters().DropUnknownSSRC.Load() > drops })
		seq++
		mediaIntact(t, tg, victim, atkMedia, seq)
		seq++
		if tg.gw.Calls() != 1 {
			t.Fatalf("%s: call gone", tc.name)
		}
		testkit.WaitFor(t, 2*time.Second, tc.name+" counted", func() bool { return tg.gw.Counters().DialogMismatch.Load() == mismatches+1 })
	}
	if uas.evil.Load() != 0 || uas.invites.Load() != invitesBefore || uas.byes.Load() != 0 {
		t.Fatalf("reached the inside server: %d evil RTP, %d INVITEs, %d BYEs", uas.evil.Load(), uas.invites.Load()-invitesBefore, uas.byes.Load())
	}
	// The victim's own BYE still ends the call.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Bye(ctx); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "released", func() bool { return tg.gw.Calls() == 0 && tg.mp.PortsInUse() == 0 })
}

// TestReofferAppliedOnlyOn2xx: a re-offer (UPDATE) from the dialog's own
// party moving its media is staged; the inside server refuses it (488), so
// nothing moves: the media keeps flowing to the old socket, the new one
// gets nothing. A re-INVITE the server accepts moves it (TestCallUpdateBye).
func TestReofferAppliedOnlyOn2xx(t *testing.T) {
	uas, tg, uac := startTrio(t, nil)
	s, m1 := victimCall(t, tg, uac)
	uas.reject.Store(true)
	m2 := udpOn(t, clientIP)
	ctx := callCtx(t)
	for i, method := range []sip.RequestMethod{sip.UPDATE, sip.INVITE} {
		req := sip.NewRequest(method, s.InviteResponse.Contact().Address)
		// With video too: the stream it would add is allocated while the
		// offer is pending and released when it is refused.
		req.SetBody(offerSDP(m2.LocalAddr().(*net.UDPAddr).AddrPort(), m2.LocalAddr().(*net.UDPAddr).AddrPort(), 4242, 77))
		req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
		res, err := s.Do(ctx, req)
		if err != nil || res.StatusCode != 488 {
			t.Fatalf("%s: %v %v", method, res, err)
		}
		mediaIntact(t, tg, m1, m2, uint16(20+i))
		if tg.mp.Streams() != 1 || tg.gw.SourceStreams(clientIP) != 1 {
			t.Fatalf("%s: %d streams, %d counted after the refused offer", method, tg.mp.Streams(), tg.gw.SourceStreams(clientIP))
		}
	}
	if uas.rejected.Load() != 2 {
		t.Fatalf("inside server refused %d offers, want 2", uas.rejected.Load())
	}
}

// TestByeEndsOnlyOn2xx: a BYE the other side does not accept (500) leaves
// the call and its media in place; the BYE it accepts ends it.
func TestByeEndsOnlyOn2xx(t *testing.T) {
	uas, tg, uac := startTrio(t, nil)
	s, m := victimCall(t, tg, uac)
	uas.byeFails.Store(true)
	ctx := callCtx(t)
	bye := sip.NewRequest(sip.BYE, s.InviteResponse.Contact().Address)
	res, err := s.Do(ctx, bye)
	if err != nil || res.StatusCode != 500 {
		t.Fatalf("BYE: %v %v", res, err)
	}
	if tg.gw.Calls() != 1 {
		t.Fatal("a refused BYE ended the call")
	}
	echoOnce(t, m, tg.mp.RTPAddr(), rtp(4242, 2, "still here"))
	uas.byeFails.Store(false)
	if err := s.Bye(ctx); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "released", func() bool { return tg.gw.Calls() == 0 && tg.mp.Streams() == 0 })
}
