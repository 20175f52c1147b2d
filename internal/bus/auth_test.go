package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/traverse-rtc/traverse/internal/testkit"
)

// attacker's marks: whatever carries them came from the attacker.
const (
	evilAddr     = "198.51.100.66:6666"
	evilIdentity = "mallory"
	secretSDP    = "v=0 secret-offer-of-alice"
)

// busScene is a signal server and a victim node B on one bus, following
// what a real deployment follows, with the signal server's view recorded.
type busScene struct {
	t      *testing.T
	e      *Embedded
	signal *Client
	nodeB  *Client

	nodes  chan NodeAnnounce
	sess   chan SessionMessage
	events chan RoomEvent

	mu    sync.Mutex // guards joins
	joins []Request  // requests node B served
}

func newBusScene(t *testing.T, cfg EmbeddedConfig) *busScene {
	t.Helper()
	e, err := StartEmbedded(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	s := &busScene{t: t, e: e, nodes: make(chan NodeAnnounce, 100), sess: make(chan SessionMessage, 100),
		events: make(chan RoomEvent, 100)}
	s.signal, s.nodeB = connectAs(t, e, RoleSignal, ""), connectAs(t, e, RoleNode, "nodeB")
	if _, err := s.nodeB.HandleRequests("nodeB", func(_ context.Context, r Request) (Reply, error) {
		s.mu.Lock()
		s.joins = append(s.joins, r)
		s.mu.Unlock()
		return Reply{SDP: "v=0 answer"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	must := func(_ *Subscription, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.signal.SubscribeNodes(func(a NodeAnnounce) { s.nodes <- a }))
	must(s.signal.SubscribeSession("nodeB", "s1", func(m SessionMessage) { s.sess <- m }))
	must(s.signal.SubscribeRoomEvents("r1", func(e RoomEvent) { s.events <- e }))
	return s
}

// until reads ch until a message passes done (the sentinel sent after the
// attack: NATS keeps one connection's messages in order, and the attacker
// flushed first), reporting whether any message before it was evil.
func until[T any](t *testing.T, ch chan T, done, evil func(T) bool) bool {
	t.Helper()
	timeout := time.After(5 * time.Second)
	got := false
	for {
		select {
		case v := <-ch:
			if done(v) {
				return got
			}
			if evil(v) {
				got = true
			}
		case <-timeout:
			t.Fatal("no sentinel message")
			return got
		}
	}
}

// mountBusAttacks runs every attack of issue 10 item 3 against sc, the
// attacker holding the credentials of node A (and, first, none at all). It
// returns the attacks that succeeded.
func mountBusAttacks(t *testing.T, sc *busScene) []string {
	t.Helper()
	var won []string
	// 1. A stranger connects without credentials, or with a key of its own.
	if nc, err := nats.Connect(sc.e.URL(), nats.NoReconnect()); err == nil {
		won = append(won, "connect without credentials")
		nc.Close()
	}
	stranger, _ := nkeys.CreateUser()
	spub, _ := stranger.PublicKey()
	if nc, err := nats.Connect(sc.e.URL(), nats.NoReconnect(), nats.Nkey(spub, stranger.Sign)); err == nil {
		won = append(won, "connect with an unknown key")
		nc.Close()
	}

	// The attacker: node A's credentials, a raw nats.go connection.
	idA, err := sc.e.NewIdentity(RoleNode, "nodeA")
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(sc.e.URL(), nats.NoReconnect(), nats.Nkey(idA.Public(), idA.sign),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatalf("node A's own credentials refused: %v", err)
	}
	defer nc.Close()

	// 2. Read joins (with their SDP) and session messages of node B.
	var snoops []*nats.Subscription
	for _, subj := range []string{">", NodeRPCSubject("nodeB"), SessionSubject("*", "*"), "traverse.signal.session.*"} {
		sub, err := nc.SubscribeSync(subj)
		if err != nil {
			t.Fatal(err)
		}
		snoops = append(snoops, sub)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.signal.Request(context.Background(), "nodeB", Request{Type: RequestJoin, Session: "s1",
		Join: &Join{Room: "r1", Identity: "alice", Publish: true, Subscribe: true, Offer: secretSDP}}); err != nil {
		t.Fatalf("signal's own join: %v", err)
	}
	if err := sc.nodeB.PublishSession("nodeB", SessionMessage{Type: SessionOffer, Session: "s1", SDP: secretSDP}); err != nil {
		t.Fatal(err)
	}
	<-sc.sess // signal has it: the server routed it to every subscriber
	_ = nc.Flush()
	for _, sub := range snoops {
		for {
			m, err := sub.NextMsg(0)
			if err != nil {
				break
			}
			if strings.Contains(string(m.Data), "secret-offer") {
				won = append(won, "read SDP on "+sub.Subject)
				break
			}
		}
	}

	pub := func(subject string, v any) {
		b, _ := json.Marshal(v)
		_ = nc.Publish(subject, b)
	}
	now := time.Now().UTC()
	// 3. Announce as node B (on B's subject, and B's name on A's subject),
	// with the attacker's media address, to receive B's placements.
	fake := NodeAnnounce{Node: "nodeB", UDP: evilAddr, Time: now}
	pub(NodeAnnounceSubject("nodeB"), fake)
	pub(NodeAnnounceSubject("nodeA"), fake)
	pub("traverse.sfu.announce", fake) // the subject of before
	// 4. Kick alice's session with a forged error, 5. inject a participant.
	forged := SessionMessage{Type: SessionError, Session: "s1", Error: Errorf(StatusUnavailable, "kicked")}
	pub(SessionSubject("nodeB", "s1"), forged)
	pub(SessionSubject("nodeA", "s1"), forged)
	joined := RoomEvent{Type: EventParticipantJoined, Room: "r1", Node: "nodeB", Session: "s9", Identity: evilIdentity, Time: now}
	pub(RoomEventsSubject("nodeB", "r1"), joined)
	pub(RoomEventsSubject("nodeA", "r1"), joined)
	// 6. Join B's room without a token: call node B as if signal.
	req, _ := json.Marshal(Request{Type: RequestJoin, Session: "s-evil", Join: &Join{Room: "r1", Identity: evilIdentity,
		Publish: true, Subscribe: true, Offer: "v=0"}})
	_ = nc.PublishRequest(NodeRPCSubject("nodeB"), nc.NewRespInbox(), req)
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	// Sentinels from the legitimate parties, after the attack.
	if err := sc.nodeB.AnnounceNode(NodeAnnounce{Node: "nodeB", UDP: "127.0.0.1:7882", Time: now}); err != nil {
		t.Fatal(err)
	}
	if until(t, sc.nodes, func(a NodeAnnounce) bool { return a.Node == "nodeB" && a.UDP != evilAddr },
		func(a NodeAnnounce) bool { return a.UDP == evilAddr }) {
		won = append(won, "announce as node B")
	}
	if err := sc.nodeB.PublishSession("nodeB", SessionMessage{Type: SessionCandidate, Session: "s1"}); err != nil {
		t.Fatal(err)
	}
	if until(t, sc.sess, func(m SessionMessage) bool { return m.Type == SessionCandidate },
		func(m SessionMessage) bool { return m.Type == SessionError }) {
		won = append(won, "forge a session error")
	}
	if err := sc.nodeB.PublishRoomEvent(RoomEvent{Type: EventParticipantLeft, Room: "r1", Node: "nodeB", Session: "s1", Identity: "alice", Time: now}); err != nil {
		t.Fatal(err)
	}
	if until(t, sc.events, func(e RoomEvent) bool { return e.Identity == "alice" },
		func(e RoomEvent) bool { return e.Identity == evilIdentity }) {
		won = append(won, "inject participant joined")
	}
	// Requests of one session are served in order: the sentinel leave of
	// s-evil comes after the attacker's join, if that got through.
	if _, err := sc.signal.Request(context.Background(), "nodeB", Request{Type: RequestLeave, Session: "s-evil"}); err != nil {
		t.Fatal(err)
	}
	sc.mu.Lock()
	for _, r := range sc.joins {
		if r.Join != nil && r.Join.Identity == evilIdentity {
			won = append(won, "join without a token")
		}
	}
	sc.mu.Unlock()
	return won
}

// TestBusAttacks mounts, with real nats.go clients, the attacks a local
// process made on serve's bus: on a bus without authentication (the bus
// before this change, EmbeddedConfig.NoAuth) every one succeeds; with the
// default credentials and permissions none does.
func TestBusAttacks(t *testing.T) {
	t.Run("no-auth", func(t *testing.T) {
		won := mountBusAttacks(t, newBusScene(t, EmbeddedConfig{Listen: "127.0.0.1:0", NoAuth: true}))
		for _, want := range []string{"connect without credentials", "connect with an unknown key", "read SDP on >",
			"read SDP on " + NodeRPCSubject("nodeB"), "announce as node B", "forge a session error",
			"inject participant joined", "join without a token"} {
			found := false
			for _, w := range won {
				found = found || w == want
			}
			if !found {
				t.Errorf("without authentication the attack %q failed: the test does not mount it", want)
			}
		}
	})
	t.Run("default", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		sc := newBusScene(t, EmbeddedConfig{Listen: "127.0.0.1:0", Registerer: reg})
		if won := mountBusAttacks(t, sc); len(won) > 0 {
			t.Errorf("attacks that succeeded: %q", won)
		}
		if n := testutil.ToFloat64(sc.e.m.authFailures); n < 2 {
			t.Errorf("auth failures counted %v, want 2", n)
		}
		// The refused publishes and subscriptions are counted (the server
		// reports them asynchronously).
		testkit.Eventually(5*time.Second, func() bool { return testutil.ToFloat64(sc.e.m.violations) >= 5 })
		if n := testutil.ToFloat64(sc.e.m.violations); n < 5 {
			t.Errorf("permission violations counted %v, want at least 5", n)
		}
		if sc.signal.BadMessages() == 0 {
			t.Error("messages naming another node than their subject's were not dropped and counted")
		}
	})
}

// A node's credentials name it: the node may not serve another node's
// requests nor announce another node, and everything it needs works.
func TestNodePermissionsAllowItsOwnWork(t *testing.T) {
	_, signal, node := startBus(t, "n1")
	if _, err := node.HandleRequests("n1", func(context.Context, Request) (Reply, error) { return Reply{}, nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := signal.Request(context.Background(), "n1", Request{Type: RequestLeave, Session: "s"}); err != nil {
		t.Fatalf("signal -> own node: %v", err)
	}
	// Serving n2's requests: the subscription is refused, the request finds
	// no responder.
	if _, err := node.HandleRequests("n2", func(context.Context, Request) (Reply, error) { return Reply{}, nil }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := signal.Request(ctx, "n2", Request{Type: RequestLeave, Session: "s"}); StatusOf(err) != StatusUnavailable {
		t.Fatalf("node n1 served n2's request: %v", err)
	}
	testkit.Eventually(5*time.Second, func() bool { return node.Refused() != 0 })
	if node.Refused() == 0 {
		t.Error("the refused subscription was not reported to the node")
	}
}

// Credentials files: written 0600, read back with role and node, refused
// when others may read them; an embedded server accepts a connection made
// from the file.
func TestCredentialsFile(t *testing.T) {
	dir := t.TempDir()
	id, err := NewIdentity(RoleNode, "n7")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "n7.creds")
	if err := id.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v %v", st.Mode(), err)
	}
	back, err := LoadIdentity(path)
	if err != nil || back.Role != RoleNode || back.Node != "n7" || back.Public() != id.Public() {
		t.Fatalf("loaded %+v %v", back, err)
	}
	e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", Identities: []*Identity{back}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	c, err := Connect(Config{URLs: []string{e.URL()}, CredsFile: path}, nil)
	if err != nil {
		t.Fatalf("connect with the file: %v", err)
	}
	c.Close()
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIdentity(path); !errors.Is(err, ErrCredentialsMode) {
		t.Fatalf("world-readable file: %v", err)
	}
	for _, bad := range []string{"# role: sfu\nSUAM\n", "# role: admin\n", "# role: sfu\n# node: a.b\n"} {
		if _, err := ParseIdentity([]byte(bad)); !errors.Is(err, ErrCredentials) {
			t.Errorf("ParseIdentity(%q): %v", bad, err)
		}
	}
}

// No authentication on an address other hosts reach needs the explicit
// opt-in; TLS-less non-loopback listening is flagged.
func TestEmbeddedRefusesOpenBus(t *testing.T) {
	if _, err := StartEmbedded(EmbeddedConfig{Listen: "0.0.0.0:0", NoAuth: true}); !errors.Is(err, ErrInsecure) {
		t.Fatalf("no auth on 0.0.0.0: %v", err)
	}
	reg := prometheus.NewRegistry()
	e, err := StartEmbedded(EmbeddedConfig{Listen: "0.0.0.0:0", Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.Insecure() == "" || testutil.ToFloat64(e.m.insecure) != 1 {
		t.Errorf("0.0.0.0 without TLS not flagged: %q", e.Insecure())
	}
	lo, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer lo.Close()
	if lo.Insecure() != "" {
		t.Errorf("loopback flagged: %q", lo.Insecure())
	}
}

// A flood of idle connections to the bus port: the server holds at most
// MaxConns (the rest are closed at once), the roles' connections keep
// working meanwhile, and every flood connection is closed within the auth
// timeout.
func TestEmbeddedConnectionFlood(t *testing.T) {
	reg := prometheus.NewRegistry()
	e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", MaxConns: 8, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	signal, node := connectAs(t, e, RoleSignal, ""), connectAs(t, e, RoleNode, "n1")
	if _, err := node.HandleRequests("n1", func(context.Context, Request) (Reply, error) { return Reply{}, nil }); err != nil {
		t.Fatal(err)
	}
	const flood = 200
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range flood {
		c, err := net.Dial("tcp", e.Addr().String())
		if err != nil {
			continue
		}
		held = append(held, c)
	}
	// Meanwhile the roles' requests go through, and the server never
	// holds more than MaxConns.
	for i := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := signal.Request(ctx, "n1", Request{Type: RequestLeave, Session: fmt.Sprintf("s%d", i)})
		cancel()
		if err != nil {
			t.Fatalf("request %d during the flood: %v", i, err)
		}
		if n := e.ns.NumClients(); n > 8 {
			t.Fatalf("%d connections held, max 8", n)
		}
	}
	// The server closes every flood connection: refused at once, or idle
	// past the auth timeout.
	buf := make([]byte, 4096)
	for _, c := range held {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			if _, err := c.Read(buf); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatal("an idle unauthenticated connection was held past the auth timeout")
				}
				break
			}
		}
	}
	if got, _ := testutil.GatherAndCount(reg, "traverse_bus_connections", "traverse_bus_max_connections"); got != 2 {
		t.Errorf("connection gauges: %d of 2", got)
	}
}

// connectAs connects a client with a fresh identity of role (and node) to
// e, closed at the test's end.
func connectAs(t *testing.T, e *Embedded, role Role, node string) *Client {
	t.Helper()
	id, err := e.NewIdentity(role, node)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Connect(Config{URLs: []string{e.URL()}, Identity: id}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
