package main

import (
	"context"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/logging/logtest"
	"github.com/traverse-rtc/traverse/internal/signal"
)

type noNodes struct{}

func (noNodes) Nodes() []signal.Node { return nil }
func (noNodes) Join(context.Context, signal.Node, signal.JoinRequest, func(signal.NodeEvent)) (signal.Link, error) {
	return nil, signal.ErrNoNode
}

// TestCall runs a listener and a caller through a signal server on
// loopback and checks both print a direct path and reports with nothing lost.
func TestCall(t *testing.T) {
	key := []byte("0123456789abcdef0123")
	s, err := signal.New(signal.Config{Key: key, Backend: noNodes{}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(func() { hs.Close(); s.Close() })
	url := "ws" + strings.TrimPrefix(hs.URL, "http") + "/p2p"
	tok := func(id string) string {
		tk, err := signal.MintToken(key, signal.Claims{Room: "calls", Identity: id, Publish: true, Expires: time.Now().Add(time.Hour).Unix()})
		if err != nil {
			t.Fatal(err)
		}
		return tk
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var bobOut, aliceOut logtest.Buffer // written by the command, read by the test
	errc := make(chan error, 1)
	go func() {
		errc <- call(ctx, &bobOut, []string{"--signal", url, "--token", tok("bob"), "--listen", "--portmap=false", "--duration", "1500ms", "--interval", "500ms", "--rate", "100"})
	}()
	if err := call(ctx, &aliceOut, []string{"--signal", url, "--token", tok("alice"), "--to", "bob", "--portmap=false", "--duration", "1500ms", "--interval", "500ms", "--rate", "100"}); err != nil {
		t.Fatalf("alice: %v\n%s", err, aliceOut.String())
	}
	if err := <-errc; err != nil {
		t.Fatalf("bob: %v\n%s", err, bobOut.String())
	}
	for name, out := range map[string]string{"alice": aliceOut.String(), "bob": bobOut.String()} {
		if !strings.Contains(out, "path direct") || !strings.Contains(out, "(first, was none)") {
			t.Errorf("%s printed no direct path:\n%s", name, out)
		}
		re := regexp.MustCompile(`direct rtt \S+ loss ([0-9.]+)% jitter \S+ sent (\d+) recv (\d+)`)
		m := re.FindAllStringSubmatch(out, -1)
		if len(m) < 2 {
			t.Fatalf("%s printed %d reports:\n%s", name, len(m), out)
		}
		if last := m[len(m)-1]; last[1] != "0.0" || last[3] == "0" {
			t.Errorf("%s: last report %q", name, last[0])
		}
	}
	t.Logf("alice:\n%s", aliceOut.String())
}
