package sipgw

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/pion/sdp/v3"

	"github.com/traverse-rtc/traverse/internal/testkit"
)

// goUAS is an inside server in Go: it answers INVITE, re-INVITE and UPDATE
// with an SDP pointing every stream at one RTP echo socket, and BYE with 200.
type goUAS struct {
	addr     netip.AddrPort
	echo     *net.UDPConn
	ua       *sipgo.UserAgent
	hold     atomic.Bool       // answer INVITEs with 180 only (for CANCEL)
	holdFrom atomic.Value      // string: answer INVITEs from this From user with 180 only
	reject   atomic.Bool       // answer re-INVITEs and UPDATEs 488
	refuse   atomic.Int64      // when not 0, answer initial INVITEs with this code
	byeFails atomic.Bool       // answer BYE 500
	evil     atomic.Int64      // RTP packets whose payload says "evil"
	rejected atomic.Int64      // in-dialog requests answered 481 or 488
	dialogs  map[string]string // Call-ID -> this server's To-tag (guarded by mu)
	invites  atomic.Int64
	byes     atomic.Int64
	updates  atomic.Int64
	cancels  atomic.Int64
	mu       sync.Mutex
	lastBody string
	ackBody  string // the last ACK's body (guarded by mu)
	acks     atomic.Int64
}

// startUAS starts the inside test server: it answers INVITE, UPDATE, BYE
// and the rest like a PBX, with switches to refuse offers and BYEs. It is
// one function because its handlers share the server's state; each is a
// few lines.
func startUAS(t *testing.T, ip netip.Addr) *goUAS {
	t.Helper()
	u := &goUAS{dialogs: map[string]string{}}
	var err error
	u.echo, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		t.Fatal(err)
	}
	_ = u.echo.SetReadBuffer(8 << 20)
	pc, err := net.ListenPacket("udp4", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	u.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	u.ua, _ = sipgo.NewUA(sipgo.WithUserAgentHostname(ip.String()), sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(slog.Default().With("peer", "uas"))))
	srv, _ := sipgo.NewServer(u.ua)
	// known says whether an in-dialog request names a dialog this server
	// made, as a real PBX checks (RFC 3261 section 12.2.2): anything else
	// gets 481.
	known := func(req *sip.Request, tx sip.ServerTransaction) bool {
		tag := toTagOf(req)
		if tag == "" {
			return true
		}
		u.mu.Lock()
		ok := u.dialogs[req.CallID().Value()] == tag
		u.mu.Unlock()
		if !ok {
			u.rejected.Add(1)
			_ = tx.Respond(sip.NewResponseFromRequest(req, 481, "Call/Transaction Does Not Exist", nil))
		}
		return ok
	}
	answer := func(req *sip.Request, tx sip.ServerTransaction) {
		if !known(req, tx) {
			return
		}
		if toTagOf(req) != "" && u.reject.Load() {
			u.rejected.Add(1)
			_ = tx.Respond(sip.NewResponseFromRequest(req, 488, "Not Acceptable Here", nil))
			return
		}
		u.mu.Lock()
		u.lastBody = string(req.Body())
		u.mu.Unlock()
		media := netip.AddrPortFrom(ip, uint16(u.echo.LocalAddr().(*net.UDPAddr).Port))
		body := answerSDP(req.Body(), media)
		if len(req.Body()) == 0 { // a late offer: the server offers in its 2xx
			body = []byte(fmt.Sprintf("v=0\r\no=uas 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP 0\r\n", ip, ip, media.Port()))
		}
		res := sip.NewResponseFromRequest(req, 200, "OK", body)
		if toTagOf(req) == "" {
			u.mu.Lock()
			u.dialogs[req.CallID().Value()] = toTagOf(res)
			u.mu.Unlock()
		}
		res.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "uas", Host: ip.String(), Port: int(u.addr.Port())}})
		res.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
		_ = tx.Respond(res)
	}
	srv.OnInvite(func(req *sip.Request, tx sip.ServerTransaction) {
		u.invites.Add(1)
		if code := u.refuse.Load(); code != 0 && toTagOf(req) == "" {
			_ = tx.Respond(sip.NewResponseFromRequest(req, int(code), "Refused", nil))
			return
		}
		if u.hold.Load() || (u.holdFrom.Load() != nil && req.From().Address.User == u.holdFrom.Load().(string)) {
			tx.OnCancel(func(*sip.Request) { u.cancels.Add(1) })
			res := sip.NewResponseFromRequest(req, 180, "Ringing", nil)
			_ = tx.Respond(res)
			<-tx.Done()
			return
		}
		answer(req, tx)
	})
	srv.OnUpdate(func(req *sip.Request, tx sip.ServerTransaction) { u.updates.Add(1); answer(req, tx) })
	srv.OnAck(func(req *sip.Request, _ sip.ServerTransaction) {
		u.mu.Lock()
		u.ackBody = string(req.Body())
		u.mu.Unlock()
		u.acks.Add(1)
	})
	srv.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
		if !known(req, tx) {
			return
		}
		u.byes.Add(1)
		if u.byeFails.Load() {
			_ = tx.Respond(sip.NewResponseFromRequest(req, 500, "Server Internal Error", nil))
			return
		}
		_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = srv.ServeUDP(pc) }()
	go func() { // RTP echo
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			n, a, err := u.echo.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if strings.Contains(string(buf[:n]), "evil") {
				u.evil.Add(1)
			}
			_, _ = u.echo.WriteToUDPAddrPort(buf[:n], a)
		}
	}()
	t.Cleanup(func() { pc.Close(); u.echo.Close(); u.ua.Close(); wg.Wait() })
	return u
}

func (u *goUAS) body() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.lastBody
}

// answerSDP answers every m-line of offer at media.
func answerSDP(offer []byte, media netip.AddrPort) []byte {
	var o sdp.SessionDescription
	if err := o.Unmarshal(offer); err != nil {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "v=0\r\no=uas 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\n", media.Addr(), media.Addr())
	for _, m := range o.MediaDescriptions {
		fmt.Fprintf(&b, "m=%s %d RTP/AVP %s\r\n", m.MediaName.Media, media.Port(), strings.Join(m.MediaName.Formats, " "))
	}
	return []byte(b.String())
}

// goUAC is an outside client in Go.
type goUAC struct {
	byes atomic.Int64 // BYEs received
	addr netip.AddrPort
	ua   *sipgo.UserAgent
	cli  *sipgo.Client
	dua  sipgo.DialogUA
}

func startUAC(t *testing.T, ip netip.Addr) *goUAC {
	t.Helper()
	pc, err := net.ListenPacket("udp4", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	_ = pc.(*net.UDPConn).SetReadBuffer(8 << 20)
	u := &goUAC{addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
	u.ua, _ = sipgo.NewUA(sipgo.WithUserAgentHostname(ip.String()), sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(slog.Default().With("peer", "uac"))))
	srv, _ := sipgo.NewServer(u.ua)
	srv.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
		u.byes.Add(1)
		_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	})
	u.cli, _ = sipgo.NewClient(u.ua, sipgo.WithClientHostname(ip.String()), sipgo.WithClientConnectionAddr(u.addr.String()))
	u.dua = sipgo.DialogUA{Client: u.cli, ContactHDR: sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "uac", Host: ip.String(), Port: int(u.addr.Port())}}}
	done := make(chan struct{})
	go func() { _ = srv.ServeUDP(pc); close(done) }()
	t.Cleanup(func() { pc.Close(); u.ua.Close(); <-done })
	// Requests leave from the listener once the transport layer holds it.
	testkit.WaitFor(t, 5*time.Second, "UAC listener registered", func() bool {
		c, err := u.ua.TransportLayer().GetConnection("udp", u.addr.String())
		return err == nil && c != nil
	})
	return u
}

// call sends an INVITE with body to the gateway and waits for the answer.
func (u *goUAC) call(ctx context.Context, gw netip.AddrPort, body []byte) (*sipgo.DialogClientSession, error) {
	s, err := u.dua.Invite(ctx, sip.Uri{Scheme: "sip", User: "svc", Host: gw.Addr().String(), Port: int(gw.Port())}, body,
		sip.NewHeader("Content-Type", "application/sdp"))
	if err != nil {
		return nil, err
	}
	if err := s.WaitAnswer(ctx, sipgo.AnswerOptions{}); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.Ack(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// offerSDP is a client offer: an audio stream and optionally a video one,
// each with its own RTP address and, when ssrc is not 0, an a=ssrc.
func offerSDP(audio, video netip.AddrPort, audioSSRC, videoSSRC uint32) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "v=0\r\no=uac 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\n", audio.Addr(), audio.Addr())
	fmt.Fprintf(&b, "m=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n", audio.Port())
	if audioSSRC != 0 {
		fmt.Fprintf(&b, "a=ssrc:%d cname:a\r\n", audioSSRC)
	}
	if video.IsValid() {
		fmt.Fprintf(&b, "m=video %d RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n", video.Port())
		if videoSSRC != 0 {
			fmt.Fprintf(&b, "a=ssrc:%d cname:a\r\n", videoSSRC)
		}
	}
	return []byte(b.String())
}
