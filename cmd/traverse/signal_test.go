package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/admin"
	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

func TestTokenCommand(t *testing.T) {
	var out bytes.Buffer
	key := "0123456789abcdef-key"
	if err := mintToken(&out, []string{"--token-key", key, "--room", "demo", "--identity", "ann", "--publish=false", "--ttl", "1h"}); err != nil {
		t.Fatal(err)
	}
	c, err := signal.ParseToken([]byte(key), strings.TrimSpace(out.String()), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if c.Room != "demo" || c.Identity != "ann" || c.Publish || !c.Subscribe || c.Expires > time.Now().Add(time.Hour+time.Minute).Unix() {
		t.Fatalf("claims %+v", c)
	}
	for _, args := range [][]string{
		{"--token-key", "short", "--room", "demo", "--identity", "ann"},
		{"--token-key", key, "--room", "bad room", "--identity", "ann"},
		{"--token-key", key, "--room", "demo"},
	} {
		if err := mintToken(io.Discard, args); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

// TestSignalRole starts the role as "traverse signal" does, against an
// embedded bus, and checks it serves the page, keeps demo tokens off unless
// asked, and stops on cancel.
func TestSignalRole(t *testing.T) {
	emb, err := bus.StartEmbedded(bus.EmbeddedConfig{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer emb.Close()
	id, err := emb.NewIdentity(bus.RoleSignal, "")
	if err != nil {
		t.Fatal(err)
	}
	busCfg := bus.Config{URLs: []string{emb.URL()}, Identity: id}
	log := slog.New(slog.DiscardHandler)
	c := &signalConfig{HTTP: netip.MustParseAddrPort("127.0.0.1:0"), TokenKey: "0123456789abcdef-key"}
	role, err := startSignal(c, busCfg, nil, log, admin.New(log))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- role.run(ctx) }()
	addr := role.addr()
	for path, want := range map[string]int{"/": 200, "/app.js": 200, "/token?room=x": 404, "/ws": 426} {
		res, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, res.StatusCode, want)
		}
	}
	testkit.Stop(t, "signal role", cancel, done)
	if _, err := startSignal(&signalConfig{HTTP: netip.MustParseAddrPort("127.0.0.1:0"), TokenKey: "short"}, busCfg, nil, log, admin.New(log)); err == nil {
		t.Fatal("short token key accepted")
	}
}
