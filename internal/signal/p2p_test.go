package signal

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/traverse-rtc/traverse/client/p2p"
)

func p2pURL(httpURL string) string { return "ws" + strings.TrimPrefix(httpURL, "http") + "/p2p" }

// TestP2PRendezvous connects two client/p2p peers by name through /p2p.
func TestP2PRendezvous(t *testing.T) {
	_, _, hs, _ := newTestServer(t, nil)
	url := p2pURL(hs.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bobTok := token(t, Claims{Room: "calls", Identity: "bob", Publish: true})
	aliceTok := token(t, Claims{Room: "calls", Identity: "alice", Publish: true})
	local := p2p.WithLocal(netip.MustParseAddrPort("127.0.0.1:0"))

	type res struct {
		c   *p2p.Conn
		err error
	}
	bobc := make(chan res, 1)
	go func() {
		s, err := p2p.AcceptSignal(ctx, url, bobTok)
		if err != nil {
			bobc <- res{nil, err}
			return
		}
		defer s.Close()
		c, err := p2p.Connect(ctx, s, local)
		bobc <- res{c, err}
		if c != nil {
			<-ctx.Done()
			c.Close()
		}
	}()
	s, err := p2p.DialSignal(ctx, url, aliceTok, "bob")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, err := p2p.Connect(ctx, s, local)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	r := <-bobc
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.c.Peer() != "alice" || a.Peer() != "bob" {
		t.Fatalf("peers %q %q", r.c.Peer(), a.Peer())
	}
	if err := a.WriteDatagram([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	p, err := r.c.ReadDatagram(ctx)
	if err != nil || string(p) != "hi" {
		t.Fatalf("read %q %v", p, err)
	}
}

type p2pClient struct {
	t  *testing.T
	ws *websocket.Conn
}

func dialP2P(t *testing.T, url string) *p2pClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	return &p2pClient{t: t, ws: c}
}

func (c *p2pClient) send(m P2PMessage) {
	c.t.Helper()
	b, _ := json.Marshal(m)
	if err := c.ws.Write(context.Background(), websocket.MessageText, b); err != nil {
		c.t.Fatal(err)
	}
}

func (c *p2pClient) recv() P2PMessage {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, b, err := c.ws.Read(ctx)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	var m P2PMessage
	if err := json.Unmarshal(b, &m); err != nil {
		c.t.Fatal(err)
	}
	return m
}

// TestP2PAuthorization mounts the attacks on the rendezvous: no token, a
// forged one, sending before registering, without the publish right, to
// another room's peer; and checks the server, not the sender, names the
// sender.
func TestP2PAuthorization(t *testing.T) {
	_, _, hs, _ := newTestServer(t, nil)
	url := p2pURL(hs.URL)

	bob := dialP2P(t, url)
	bob.send(P2PMessage{Type: "register", Token: token(t, Claims{Room: "calls", Identity: "bob", Publish: true})})
	if m := bob.recv(); m.Type != "registered" || m.Name != "bob" {
		t.Fatalf("bob: %+v", m)
	}

	early := dialP2P(t, url)
	early.send(P2PMessage{Type: "send", To: "bob", Data: json.RawMessage(`{}`)})
	if m := early.recv(); m.Type != "error" {
		t.Fatalf("send before register: %+v", m)
	}

	forged := dialP2P(t, url)
	forged.send(P2PMessage{Type: "register", Token: tamper(token(t, Claims{Room: "calls", Identity: "carol", Publish: true}))})
	if m := forged.recv(); m.Type != "error" {
		t.Fatalf("forged token: %+v", m)
	}

	viewer := dialP2P(t, url)
	viewer.send(P2PMessage{Type: "register", Token: token(t, Claims{Room: "calls", Identity: "vic", Subscribe: true})})
	viewer.recv()
	viewer.send(P2PMessage{Type: "send", To: "bob", Data: json.RawMessage(`{}`)})
	if m := viewer.recv(); m.Type != "error" || !strings.Contains(m.Error, "publish") {
		t.Fatalf("send without publish: %+v", m)
	}

	other := dialP2P(t, url)
	other.send(P2PMessage{Type: "register", Token: token(t, Claims{Room: "elsewhere", Identity: "mallory", Publish: true})})
	other.recv()
	other.send(P2PMessage{Type: "send", To: "bob", Data: json.RawMessage(`{"t":"bye"}`)})
	if m := other.recv(); m.Type != "error" || !strings.Contains(m.Error, "not registered") {
		t.Fatalf("cross-room send: %+v", m)
	}

	alice := dialP2P(t, url)
	alice.send(P2PMessage{Type: "register", Token: token(t, Claims{Room: "calls", Identity: "alice", Publish: true})})
	alice.recv()
	alice.send(P2PMessage{Type: "send", To: "bob", From: "carol", Data: json.RawMessage(`{"x":1}`)})
	if m := bob.recv(); m.Type != "msg" || m.From != "alice" || string(m.Data) != `{"x":1}` {
		t.Fatalf("bob got %+v, want a message from alice", m)
	}
	alice.send(P2PMessage{Type: "watch", Name: "dave"})
	dave := dialP2P(t, url)
	dave.send(P2PMessage{Type: "register", Token: token(t, Claims{Room: "calls", Identity: "dave", Publish: true})})
	if m := alice.recv(); m.Type != "present" || m.Name != "dave" {
		t.Fatalf("watch: %+v", m)
	}
}

// FuzzP2PMessage feeds /p2p messages to their decoder.
func FuzzP2PMessage(f *testing.F) {
	for _, s := range []string{`{"type":"register","token":"a.b.c"}`, `{"type":"watch","name":"bob"}`,
		`{"type":"send","to":"bob","data":{"t":"bye"}}`, `{"type":"send","to":"","data":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeP2P(b)
		if err != nil {
			return
		}
		again, _ := json.Marshal(m)
		if _, err := DecodeP2P(again); err != nil {
			t.Fatalf("re-encoded message refused: %v", err)
		}
	})
}
