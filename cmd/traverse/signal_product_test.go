package main

import (
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/testkit"
	"github.com/traverse-rtc/traverse/internal/turn"
	"github.com/traverse-rtc/traverse/internal/turn/turntest"
)

// TestSignalTURNCredentials: a standalone signal with --ice-url turn:...
// and --turn-secret hands each participant a TURN REST credential
// ("EXPIRY:identity", HMAC-SHA1) that traverse turn --auth-secret accepts:
// a pion client allocates with it; with another secret it cannot.
func TestSignalTURNCredentials(t *testing.T) {
	const secret = "shared-turn-secret-0123456789"
	ts, err := turn.New(turn.Config{Listen: netip.MustParseAddrPort("127.0.0.1:0"), Realm: "traverse", AuthSecret: secret, NoTCP: true})
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, ts.Run)
	turnURL := "turn:" + ts.Addr().String() + "?transport=udp"

	mint := func(secret string) signal.ICEServer {
		t.Helper()
		c := signalProductConfig{TURNSecret: secret, TURNTTL: time.Hour}
		var cfg signal.Config
		if err := c.apply(&cfg, []string{"stun:" + ts.Addr().String(), turnURL}, nil, nil); err != nil {
			t.Fatal(err)
		}
		servers := cfg.ICEServers("sip:alice@example.org")
		if len(servers) != 2 || servers[0].Username != "" || servers[1].URLs[0] != turnURL {
			t.Fatalf("ICE servers %+v", servers)
		}
		return servers[1]
	}
	s := mint(secret)
	m := regexp.MustCompile(`^(\d+):sip:alice@example\.org$`).FindStringSubmatch(s.Username)
	if m == nil || s.Credential == "" {
		t.Fatalf("credential %q %q", s.Username, s.Credential)
	}
	if exp, _ := strconv.ParseInt(m[1], 10, 64); exp < time.Now().Add(59*time.Minute).Unix() || exp > time.Now().Add(61*time.Minute).Unix() {
		t.Fatalf("expiry %d is not an hour from now", exp)
	}
	c := turntest.Client(t, ts.Addr().String(), s.Username, s.Credential, "", nil)
	relay, err := c.Allocate()
	if err != nil {
		t.Fatalf("allocate with the minted credential: %v", err)
	}
	_ = relay.Close()

	bad := mint("another-secret-0123456789")
	c2 := turntest.Client(t, ts.Addr().String(), bad.Username, bad.Credential, "", nil)
	if relay, err := c2.Allocate(); err == nil {
		_ = relay.Close()
		t.Fatal("allocated with a credential of another secret")
	}
}

// TestSignalProductRefusesMistakes: the signal flags for browsers and
// operators refuse what cannot work, naming the flag (in serve, with its
// prefix).
func TestSignalProductRefusesMistakes(t *testing.T) {
	tests := []struct {
		name   string
		c      signalProductConfig
		ice    []string
		want   string
		prefix string
	}{
		{"turn without secret", signalProductConfig{}, []string{"turn:t.example:3478"}, "--ice-url turn:t.example:3478 needs --turn-secret", ""},
		{"serve turn without secret", signalProductConfig{}, []string{"turns:t.example:5349"}, "--signal-ice-url turns:t.example:5349 needs --signal-turn-secret", "signal-"},
		{"bad scheme", signalProductConfig{}, []string{"http://x"}, `--ice-url "http://x": want stun:`, ""},
		{"short turn secret", signalProductConfig{TURNSecret: "x"}, []string{"turn:t:1"}, "--turn-secret: at least 16 bytes", ""},
		{"negative turn ttl", signalProductConfig{TURNTTL: -time.Second}, nil, "--turn-ttl -1s: must not be negative", ""},
		{"short admin token", signalProductConfig{AdminToken: "short"}, nil, "--admin-token must be at least 16 bytes", ""},
		{"webhook without key", signalProductConfig{WebhookURLs: []string{"http://127.0.0.1:1/"}}, nil, "--webhook-key is required with --webhook-url", ""},
		{"half tls pair", signalProductConfig{TLSCert: "c.pem"}, nil, "--tls-cert and --tls-key go together", ""},
		{"tls both ways", signalProductConfig{TLSCert: "c.pem", TLSKey: "k.pem", TLSSelfSigned: true}, nil, "--tls-self-signed or --tls-cert and --tls-key, not both", ""},
		{"missing tls files", signalProductConfig{TLSCert: "/nonexistent/c.pem", TLSKey: "/nonexistent/k.pem"}, nil, "--tls-cert, --tls-key: ", ""},
		{"negative webhook queue", signalProductConfig{WebhookQueue: -1}, nil, "--webhook-queue -1: must not be negative", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.c.prefix = tt.prefix
			var cfg signal.Config
			err := tt.c.apply(&cfg, tt.ice, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
	// And the good cases pass.
	for _, c := range []signalProductConfig{{TLSSelfSigned: true}, {AdminToken: "0123456789abcdef"},
		{WebhookURLs: []string{"https://hooks.example/x"}, WebhookKey: "0123456789abcdef"}} {
		var cfg signal.Config
		if err := c.apply(&cfg, []string{"stun:s.example:3478"}, nil, nil); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
}
