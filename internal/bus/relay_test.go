package bus

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/testkit"
)

// FuzzRelayDecode feeds the relay messages' decoders.
func FuzzRelayDecode(f *testing.F) {
	for _, s := range []string{
		`{"node":"r1","region":"eu","addr":"203.0.113.5:3480","nat":true,"mapping":"endpoint-independent","filtering":"address-dependent","volunteer":true,"sessions":1,"max_sessions":8,"bitrate":1000,"max_bitrate":4000000,"time":"2026-01-01T00:00:00Z"}`,
		`{"node":"r1","addr":"[2001:db8::1]:3480","mapping":"unknown","filtering":"unknown"}`,
		`{"node":"r1","session":"00112233445566778899aabbccddeeff","peers":["198.51.100.1:4000","[2001:db8::2]:5"],"expires":"2026-01-01T00:00:00Z"}`,
		`{"node":"r1","session":"0011","peers":[]}`, `{"node":"r1","addr":"x","mapping":"a","filtering":"b"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		check[RelayAnnounce](t, b)
		check[RelayOpen](t, b)
	})
}

// A relay node's credential lets it announce itself and read its own open
// messages, nothing else: it cannot announce as another node (the server
// refuses the subject; a forged name on its own subject is dropped by the
// receiver), read another node's grants' peer addresses, nor call SFU nodes.
func TestRelayPermissions(t *testing.T) {
	sc := newBusScene(t, EmbeddedConfig{Listen: "127.0.0.1:-1"})
	good, evil := connectAs(t, sc.e, RoleRelay, "r1"), connectAs(t, sc.e, RoleRelay, "evil")
	relays := make(chan RelayAnnounce, 100)
	if _, err := sc.signal.SubscribeRelays(func(a RelayAnnounce) { relays <- a }); err != nil {
		t.Fatal(err)
	}
	opens, stolen := make(chan RelayOpen, 10), make(chan RelayOpen, 10)
	if _, err := good.SubscribeRelayOpen("r1", func(o RelayOpen) { opens <- o }); err != nil {
		t.Fatal(err)
	}
	// The server refuses the subscription (asynchronously): nothing arrives.
	_, _ = evil.SubscribeRelayOpen("r1", func(o RelayOpen) { stolen <- o })

	ann := func(node, region string) RelayAnnounce {
		return RelayAnnounce{Node: node, Region: region, Addr: "203.0.113.5:3480", Mapping: "endpoint-independent",
			Filtering: "endpoint-independent", Time: time.Now()}
	}
	// Attacks: publish on r1's subject; r1's name on evil's own subject.
	b, _ := json.Marshal(ann("r1", "evil"))
	_ = evil.Conn().Publish(RelayAnnounceSubject("r1"), b)
	_ = evil.Conn().Publish(RelayAnnounceSubject("evil"), b)
	_ = evil.Conn().Publish(NodeRPCSubject("nodeB"), []byte(`{"type":"leave","session":"s1"}`))
	_ = evil.Conn().Flush()
	if err := evil.AnnounceRelay(ann("evil", "done")); err != nil {
		t.Fatal(err)
	}
	if until(t, relays, func(a RelayAnnounce) bool { return a.Region == "done" }, func(a RelayAnnounce) bool { return a.Region == "evil" }) {
		t.Error("a forged relay announcement reached signal")
	}
	if err := good.AnnounceRelay(ann("r1", "eu")); err != nil {
		t.Fatal(err)
	}
	if a := <-relays; a.Node != "r1" || a.Region != "eu" {
		t.Errorf("signal got %+v", a)
	}
	o := RelayOpen{Node: "r1", Session: "00112233445566778899aabbccddeeff", Peers: []string{"198.51.100.1:4000"}, Expires: time.Now()}
	if err := sc.signal.OpenRelay(o); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "r1 gets its open message", func() bool { return len(opens) == 1 })
	if len(stolen) != 0 {
		t.Error("another relay read r1's open message")
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if len(sc.joins) != 0 {
		t.Error("a relay credential called an SFU node")
	}
	if sc.signal.BadMessages() == 0 {
		t.Error("the forged announcement on evil's own subject was not counted")
	}
}
