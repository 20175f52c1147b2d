package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/traverse-rtc/traverse/internal/config"
)

// TestExampleConfigs loads every example file under deploy/examples with
// the command it is named for, so that the examples cannot drift from the
// keys the commands take.
func TestExampleConfigs(t *testing.T) {
	files, err := filepath.Glob("../../deploy/examples/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		seen[name] = true
		t.Run(name, func(t *testing.T) {
			cmd, ok := commands[name]
			if !ok {
				t.Fatalf("%s: no command %q", f, name)
			}
			err := cmd.run(context.Background(), []string{"--config", f, "--check-config"})
			if !errors.Is(err, errConfigChecked) {
				t.Fatalf("traverse %s --config %s: %v", name, f, err)
			}
		})
	}
	for _, role := range []string{"serve", "bus", "stun", "turn", "sfu", "signal", "sipgw"} {
		if !seen[role] {
			t.Errorf("no deploy/examples/%s.yaml", role)
		}
	}
}

// TestConfigRefusesMistakes: unknown keys and unsafe or impossible values
// are refused, the message naming the key or the flag.
func TestConfigRefusesMistakes(t *testing.T) {
	dir := t.TempDir()
	file := func(body string) string {
		f, err := os.CreateTemp(dir, "*.yaml")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(body); err != nil {
			t.Fatal(err)
		}
		_ = f.Close()
		return f.Name()
	}
	key := "0123456789abcdef0123"
	tests := []struct {
		name, cmd string
		args      []string
		want      string
	}{
		{"top-level unknown key", "turn", []string{"--config", file("listen: 127.0.0.1:0\nrealmm: x\n"), "--check-config"}, `line 2: unknown key "realmm"`},
		{"nested unknown key", "stun", []string{"--config", file("log:\n  levle: debug\n"), "--check-config"}, `unknown key "log.levle"`},
		{"serve section unknown key", "serve", []string{"--config", file("signal:\n  htp: 127.0.0.1:1\n"), "--check-config"}, `unknown key "signal.htp"`},
		{"serve unknown top key", "serve", []string{"--config", file("listen: 127.0.0.1:1\n"), "--check-config"}, `unknown key "listen"`},
		{"serve role key at top", "serve", []string{"--config", file("turn:\n  realm: x\nrealm: y\n"), "--check-config"}, `unknown key "realm"`},
		{"bad type", "turn", []string{"--config", file("max-allocations: lots\n"), "--check-config"}, "line 1"},
		{"turn empty password", "turn", []string{"--admin", "", "--listen", "127.0.0.1:0", "--realm", "x", "--user", "alice:"}, "--user alice: empty password"},
		{"turn negative shards", "turn", []string{"--admin", "", "--listen", "127.0.0.1:0", "--realm", "x", "--user", "a:b", "--shards", "-1"}, "--shards -1: want 1 or more"},
		{"turn no realm", "turn", []string{"--admin", "", "--listen", "127.0.0.1:0", "--user", "a:b"}, "--realm is required"},
		{"turn short secret", "turn", []string{"--admin", "", "--listen", "127.0.0.1:0", "--realm", "x", "--auth-secret", "short"}, "--auth-secret: at least 16 bytes"},
		{"turn bad listen", "turn", []string{"--admin", "", "--listen", "nowhere", "--realm", "x", "--user", "a:b"}, "--listen: "},
		{"turn bad relay ports", "turn", []string{"--admin", "", "--listen", "127.0.0.1:0", "--realm", "x", "--user", "a:b", "--relay-ports", "9-x"}, "--relay-ports: want LOW-HIGH"},
		{"signal negative join timeout", "signal", []string{"--admin", "", "--nats", "nats://127.0.0.1:1", "--token-key", key, "--join-timeout", "-1s"}, "--join-timeout -1s: must not be negative"},
		{"signal negative max conns", "signal", []string{"--admin", "", "--nats", "nats://127.0.0.1:1", "--token-key", key, "--max-conns", "-1"}, "--max-conns -1: must not be negative"},
		{"signal short token key", "signal", []string{"--admin", "", "--nats", "nats://127.0.0.1:1", "--token-key", "short"}, "--token-key must be at least 16 bytes"},
		{"signal turn url without secret", "signal", []string{"--admin", "", "--nats", "nats://127.0.0.1:1", "--token-key", key, "--ice-url", "turn:t.example:3478"}, "needs --turn-secret"},
		{"sipgw bad inside ports", "sipgw", []string{"--admin", "", "--sip", "127.0.0.1:0", "--rtp", "127.0.0.1:0", "--rtcp", "127.0.0.1:0",
			"--upstream", "127.0.0.1:5080", "--inside-ip", "127.0.0.1", "--inside-ports", "9-1"}, "--inside-ports: "},
		{"sfu group without the cascade", "sfu", []string{"--admin", "", "--nats", "nats://127.0.0.1:1", "--udp", "127.0.0.1:0", "--group", "g1"}, "--group needs --cascade-listen"},
		{"sfu group in yaml without the cascade", "sfu", []string{"--admin", "", "--config", file("nats: nats://127.0.0.1:1\nudp: 127.0.0.1:0\ngroup: g1\n")}, "--group needs --cascade-listen"},
		{"token room too long", "token", []string{"--token-key", key, "--room", strings.Repeat("r", 65), "--identity", "a"}, "--room"},
		{"token room bad char", "token", []string{"--token-key", key, "--room", "a.b", "--identity", "a"}, "--room"},
		{"token no identity", "token", []string{"--token-key", key, "--room", "r"}, "--identity is required"},
		{"token no room", "token", []string{"--token-key", key, "--identity", "a"}, "--room is required"},
		{"token negative ttl", "token", []string{"--token-key", key, "--room", "r", "--identity", "a", "--ttl", "-1h"}, "--ttl -1h0m0s: must be positive"},
		{"token zero ttl", "token", []string{"--token-key", key, "--room", "r", "--identity", "a", "--ttl", "0s"}, "--ttl"},
		{"token short key", "token", []string{"--token-key", "short", "--room", "r", "--identity", "a"}, "--token-key must be at least 16 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if tt.cmd == "token" {
				err = mintToken(io.Discard, tt.args)
			} else {
				ctx, cancel := context.WithCancel(context.Background())
				cancel() // a role that got past its checks stops at once
				err = commands[tt.cmd].run(ctx, tt.args)
			}
			if err == nil || errors.Is(err, errConfigChecked) {
				t.Fatalf("accepted: %v", err)
			}
			if msg := errorLine(tt.cmd, err); !strings.Contains(msg, tt.want) {
				t.Fatalf("error %q does not contain %q", msg, tt.want)
			}
		})
	}
}

// TestTokenRoomsTheBusTakes: a 64-character room is minted, a 65 not.
func TestTokenRoomsTheBusTakes(t *testing.T) {
	key := "0123456789abcdef0123"
	if err := mintToken(io.Discard, []string{"--token-key", key, "--room", strings.Repeat("r", 64), "--identity", "a"}); err != nil {
		t.Fatal(err)
	}
}

// TestServeFlagNamesInErrors: inside serve, a role's errors name the
// prefixed flag the operator typed.
func TestServeFlagNamesInErrors(t *testing.T) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var c *turnConfig
	for _, r := range serveRoles {
		if r.name == "turn" {
			c = r.bind(fs, "turn-").(*turnConfig)
		}
	}
	c.Users = []string{"alice:"}
	if _, err := c.serverConfig(nil, nil); err == nil || !strings.Contains(err.Error(), "--turn-user alice: empty password") {
		t.Fatalf("got %v", err)
	}
}

func TestErrorLine(t *testing.T) {
	tests := []struct {
		cmd  string
		err  error
		want string
	}{
		{"turn", errors.New("turn: listen: bad"), "turn: listen: bad"},
		{"turn", errors.New("turn: turn: x"), "turn: x"},
		{"serve", errors.New("signal: signal: invalid config: key"), "serve: signal: invalid config: key"},
		{"token", errors.New("--identity is required"), "token: --identity is required"},
	}
	for _, tt := range tests {
		if got := errorLine(tt.cmd, tt.err); got != tt.want {
			t.Errorf("errorLine(%q, %q) = %q, want %q", tt.cmd, tt.err, got, tt.want)
		}
	}
}

// TestServeKeysAreFlagNames: in serve, every flag --ROLE-NAME is the key
// NAME of the role's YAML section and every common flag a top-level key,
// as the help and README promise.
func TestServeKeysAreFlagNames(t *testing.T) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg := serveConfig{roles: map[string]any{}}
	cfg.flags(fs)
	for _, r := range serveRoles {
		cfg.roles[r.name] = r.bind(fs, r.name+"-")
	}
	common := config.Keys(&cfg.common)
	// Flags whose YAML form is a section rather than a key.
	nested := map[string]bool{"log-format": true, "log-level": true, "log-max-value": true, "log-burst": true,
		"log-interval": true, "config": true, "check-config": true,
		// Documented inverse (docs/sfu.md): the flag is on by default, the
		// YAML key is sfu.Config's no-scheduler-poll.
		"sfu-scheduler-poll": true}
	fs.VisitAll(func(f *flag.Flag) {
		if nested[f.Name] {
			return
		}
		for name, sec := range cfg.roles {
			if rest, ok := strings.CutPrefix(f.Name, name+"-"); ok {
				if !slices.Contains(config.Keys(sec), rest) {
					t.Errorf("--%s: section %s has no key %q (keys: %v)", f.Name, name, rest, config.Keys(sec))
				}
				return
			}
		}
		if !slices.Contains(common, f.Name) {
			t.Errorf("--%s: no top-level key %q", f.Name, f.Name)
		}
	})
}
