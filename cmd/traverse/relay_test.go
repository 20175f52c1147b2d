package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/admin"
	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/relaynode"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// The commands together: traverse bus makes the relay's credentials,
// traverse relay registers with them, signal with --relay-grant-seed offers
// it over POST /relay/nodes, and two peers relay through it with the grants.
func TestRelayCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "creds")
	busAddr, busAdmin, relayAdmin := freeTCP(t), freeTCP(t), freeTCP(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	run := func(name string, f func(context.Context, []string) error, args ...string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx, args); err != nil {
				t.Errorf("traverse %s: %v", name, err)
			}
		}()
	}
	run("bus", runBus, "--listen", busAddr, "--creds-dir", dir, "--relay-node", "r1", "--admin", busAdmin, "--log-level", "error")
	waitReady(t, busAdmin, 10*time.Second, nil, nil)
	if st, err := os.Stat(filepath.Join(dir, "relay-r1.creds")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("relay-r1.creds: %v %v", st, err)
	}
	var keys bytes.Buffer
	stdout := os.Stdout
	r, w, _ := os.Pipe()
	os.Stdout = w
	err := runRelay(ctx, []string{"--keygen"})
	w.Close()
	os.Stdout = stdout
	_, _ = keys.ReadFrom(r)
	if err != nil {
		t.Fatal(err)
	}
	var seed, pub string
	for _, l := range strings.Split(keys.String(), "\n") {
		if v, ok := strings.CutPrefix(l, "relay-grant-seed: "); ok {
			seed = v
		} else if v, ok := strings.CutPrefix(l, "grant-key: "); ok {
			pub = v
		}
	}
	run("relay", runRelay, "--id", "r1", "--region", "eu", "--listen", "127.0.0.1:0", "--grant-key", pub,
		"--nats", "nats://"+busAddr, "--nats-creds", filepath.Join(dir, "relay-r1.creds"), "--admin", relayAdmin, "--log-level", "error")
	waitReady(t, relayAdmin, 10*time.Second, nil, nil)

	id, err := bus.LoadIdentity(filepath.Join(dir, "signal.creds"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	const tokenKey = "0123456789abcdef-key"
	role, err := startSignal(&signalConfig{HTTP: netip.MustParseAddrPort("127.0.0.1:0"), TokenKey: tokenKey, RelayGrantSeed: seed},
		bus.Config{URLs: []string{"nats://" + busAddr}, Identity: id}, nil, log, admin.New(log))
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = role.run(ctx) }()
	tok, err := signal.MintToken([]byte(tokenKey), signal.Claims{Room: "calls", Identity: "alice", Publish: true, Expires: time.Now().Add(time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	var offer signal.RelayOffer
	testkit.WaitFor(t, 10*time.Second, "signal offers r1", func() bool {
		req, _ := http.NewRequest(http.MethodPost, "http://"+role.addr()+"/relay/nodes", strings.NewReader(`{"peer":"bob"}`))
		req.Header.Set("Authorization", "Bearer "+tok)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer res.Body.Close()
		offer = signal.RelayOffer{}
		return res.StatusCode == 200 && json.NewDecoder(res.Body).Decode(&offer) == nil && len(offer.Nodes) == 1
	})
	n := offer.Nodes[0]
	if n.ID != "r1" || n.Region != "eu" {
		t.Fatalf("offer %+v", n)
	}
	links := make([]*relaynode.Link, 2)
	var bw sync.WaitGroup
	for side := range 2 {
		g, _ := base64.RawURLEncoding.DecodeString(n.Grants[side])
		pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		bw.Add(1)
		go func() {
			defer bw.Done()
			bctx, bcancel := context.WithTimeout(ctx, 5*time.Second)
			defer bcancel()
			l, err := relaynode.Bind(bctx, pc, netip.MustParseAddrPort(n.Addr), g)
			if err != nil {
				t.Errorf("bind side %d: %v", side, err)
				pc.Close()
				return
			}
			links[side] = l
		}()
	}
	bw.Wait()
	if t.Failed() {
		return
	}
	defer links[0].Close()
	defer links[1].Close()
	if err := links[0].WriteTo([]byte("through r1"), netip.AddrPort{}); err != nil {
		t.Fatal(err)
	}
	_ = links[1].SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 100)
	k, _, err := links[1].ReadFrom(buf)
	if err != nil || string(buf[:k]) != "through r1" {
		t.Fatalf("got %q, %v", buf[:k], err)
	}
}
