package sfu

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

func bindingRequest(t testing.TB, username, pwd string) []byte {
	t.Helper()
	m, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.NewUsername(username),
		stun.NewShortTermIntegrity(pwd), stun.Fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	return m.Raw
}

func TestStunUfrag(t *testing.T) {
	req := bindingRequest(t, "srvfrag:clifrag", "password")
	resp, err := stun.Build(stun.TransactionID, stun.BindingSuccess, stun.NewUsername("srvfrag:clifrag"))
	if err != nil {
		t.Fatal(err)
	}
	noUser, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want string
		ok   bool
	}{
		{"binding request", req, "srvfrag", true},
		{"truncated", req[:len(req)-9], "", false},
		{"a response", resp.Raw, "", false},
		{"no username", noUser.Raw, "", false},
		{"rtp", []byte{0x80, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, "", false},
		{"empty", nil, "", false},
	} {
		got, ok := stunUfrag(tc.b)
		if ok != tc.ok || string(got) != tc.want {
			t.Errorf("%s: %q %v, want %q %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
	if n := testing.AllocsPerRun(100, func() { stunUfrag(req) }); n != 0 {
		t.Errorf("%v allocations", n)
	}
}

// FuzzStunUfrag: the gate's parser of every datagram a group node reads
// never panics and returns a ufrag only from within the datagram.
func FuzzStunUfrag(f *testing.F) {
	f.Add(bindingRequest(f, "a:b", "p"))
	f.Add([]byte{0, 1, 0, 8, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 6, 0, 3, 'x', ':', 'y', 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		u, ok := stunUfrag(b)
		if ok && (len(u) == 0 || !strings.Contains(string(b), string(u)+":")) {
			t.Fatalf("ufrag %q not in the datagram", u)
		}
	})
}

// Every node derives the same group certificate from the cascade secret
// and the group's name (so one answer's fingerprint is valid on all); a
// different group or secret gives another.
func TestGroupCertificate(t *testing.T) {
	fp := func(secret []byte, group string) string {
		t.Helper()
		c, err := GroupCertificate(secret, group)
		if err != nil {
			t.Fatal(err)
		}
		f, err := c.GetFingerprints()
		if err != nil {
			t.Fatal(err)
		}
		return f[0].Value
	}
	a := fp(testCascadeSecret, "g1")
	if fp(testCascadeSecret, "g1") != a {
		t.Fatal("two derivations differ")
	}
	if fp(testCascadeSecret, "g2") == a || fp([]byte(strings.Repeat("x", 32)), "g1") == a {
		t.Fatal("another group or secret gives the same certificate")
	}
	if _, err := GroupCertificate([]byte("short"), "g1"); err == nil {
		t.Fatal("a short secret accepted")
	}
}

// TestGroupClaim: a group node answers a group join with the join's ICE
// credentials and the group's certificate and holds the session
// unjoined; the client's first binding request makes it publish a claim
// (the binding is dropped); signal's RequestClaimed makes it serve the
// session; a second RequestClaimed is refused; a binding request with a
// ufrag no session has is dropped unanswered and counted.
func TestGroupClaim(t *testing.T) {
	h := newHarness(t, Config{Group: "g1", CascadeListen: netip.MustParseAddrPort("127.0.0.1:0"), CascadeSecret: testCascadeSecret})
	var mu sync.Mutex
	var claims int
	sub, err := h.bc.SubscribeSession("node1", "sess1", func(m bus.SessionMessage) {
		if m.Type == bus.SessionClaim {
			mu.Lock()
			claims++
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	claimed := func() int { mu.Lock(); defer mu.Unlock(); return claims }

	api := webrtc.NewAPI(webrtc.WithSettingEngine(loopbackSettingEngine()))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
		t.Fatal(err)
	}
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-gathered
	ice := &bus.ICECredentials{Ufrag: "groupufrag0001", Pwd: "groupPasswordOfTwentyFourChars"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rep, err := h.bc.Request(ctx, "node1", bus.Request{Type: bus.RequestJoin, Session: "sess1", Join: &bus.Join{Room: "r1",
		Identity: "alice", Subscribe: true, Offer: pc.LocalDescription().SDP, ICE: ice}})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := GroupCertificate(testCascadeSecret, "g1")
	if err != nil {
		t.Fatal(err)
	}
	fps, _ := cert.GetFingerprints()
	if !strings.Contains(rep.SDP, "a=ice-ufrag:"+ice.Ufrag) || !strings.Contains(rep.SDP, "a=ice-pwd:"+ice.Pwd) ||
		!strings.Contains(strings.ToLower(rep.SDP), strings.ToLower(fps[0].Value)) {
		t.Fatalf("answer lacks the group's credentials or certificate:\n%s", rep.SDP)
	}
	if strings.Contains(rep.SDP, " tcp ") {
		t.Fatalf("a group session offers ICE-TCP, which the gate does not watch:\n%s", rep.SDP)
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: rep.SDP}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the node's claim", func() bool { return claimed() >= 1 })
	if h.s.Sessions() != 0 || pc.ICEConnectionState() == webrtc.ICEConnectionStateConnected {
		t.Fatal("the session is served before signal confirmed the claim")
	}
	if _, err := h.bc.Request(ctx, "node1", bus.Request{Type: bus.RequestClaimed, Session: "sess1"}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the client connected to the node", func() bool {
		return pc.ConnectionState() == webrtc.PeerConnectionStateConnected && h.s.Sessions() == 1
	})
	if _, err := h.bc.Request(ctx, "node1", bus.Request{Type: bus.RequestClaimed, Session: "sess1"}); bus.StatusOf(err) != bus.StatusNotFound {
		t.Fatalf("a second claim confirmation: %v, want not found", err)
	}

	// A second session offered and never claimed: signal's leave frees it
	// (counted lost once claimed; a pending one just goes); one left
	// pending when the node stops is discarded by Close (goleak, TestMain).
	for _, id := range []string{"sess2", "sess3"} {
		ice := &bus.ICECredentials{Ufrag: "ufrag" + id, Pwd: "groupPasswordOfTwentyFourChars"}
		if _, err := h.bc.Request(ctx, "node1", bus.Request{Type: bus.RequestJoin, Session: id, Join: &bus.Join{Room: "r1",
			Identity: id, Subscribe: true, Offer: pc.LocalDescription().SDP, ICE: ice}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.bc.Request(ctx, "node1", bus.Request{Type: bus.RequestLeave, Session: "sess2"}); err != nil {
		t.Fatal(err)
	}
	if h.s.pending("sess2") != nil || h.s.pending("sess3") == nil || h.s.Sessions() != 1 {
		t.Fatal("signal's leave did not free the pending session, or a pending session counts as served")
	}

	// A binding request for a ufrag no session has: no answer, counted.
	unknown := func() float64 { return testutilCounter(h.s.grp.dropped.WithLabelValues("unknown")) }
	before := unknown()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(h.s.UDPAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(bindingRequest(t, "nosuchufrag:x", "whatever")); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "the unknown ufrag counted", func() bool { return unknown() == before+1 })
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := c.Read(make([]byte, 1500)); err == nil {
		t.Fatalf("the node answered a binding for an unknown ufrag (%d bytes)", n)
	}
}

// A session offered to a group node and never claimed (its client went
// elsewhere, or away) is dropped after the pending time and counted.
func TestGroupPendingExpires(t *testing.T) {
	h := newHarness(t, Config{Group: "g1", CascadeListen: netip.MustParseAddrPort("127.0.0.1:0"), CascadeSecret: testCascadeSecret,
		AnnounceInterval: 50 * time.Millisecond, pendingTTL: 200 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ice := &bus.ICECredentials{Ufrag: "expiringufrag", Pwd: "groupPasswordOfTwentyFourChars"}
	if _, err := h.bc.Request(ctx, "node1", bus.Request{Type: bus.RequestJoin, Session: "gone", Join: &bus.Join{Room: "r1",
		Identity: "x", Subscribe: true, Offer: recvonlyOffer(t), ICE: ice}}); err != nil {
		t.Fatal(err)
	}
	if h.s.pending("gone") == nil {
		t.Fatal("no pending session")
	}
	testkit.WaitFor(t, 5*time.Second, "the pending session expired", func() bool {
		return h.s.pending("gone") == nil && testutilCounter(h.s.grp.claims.WithLabelValues("expired")) == 1
	})
}

// recvonlyOffer is a client's offer to receive audio.
func recvonlyOffer(t *testing.T) string {
	t.Helper()
	pc, err := webrtc.NewAPI(webrtc.WithSettingEngine(loopbackSettingEngine())).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
		t.Fatal(err)
	}
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	return offer.SDP
}
