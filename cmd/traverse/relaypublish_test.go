package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/cascade/relay"
	"github.com/traverse-rtc/traverse/internal/cascade/relayauth"
	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/config"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// countingLocal is a relay endpoint's SFU that counts a relay client's
// packets.
type countingLocal struct {
	media  atomic.Int64
	room   atomic.Value
	joined atomic.Int64
}

func (l *countingLocal) DeliverMedia(room, _, _ []byte, _ uint8, _ []byte) {
	l.media.Add(1)
	l.room.Store(string(room))
}
func (*countingLocal) DeliverFeedback([]byte, []byte, []byte, uint8, relay.NodeID, []byte) {}
func (*countingLocal) Need(relay.StreamKey, bool)                                          {}
func (l *countingLocal) ClientJoin(relay.ClientID, relay.ClientGrant, []relaywire.ClientTrack) error {
	l.joined.Add(1)
	return nil
}
func (*countingLocal) ClientLeave(relay.ClientID, relay.ClientGrant, []relaywire.ClientTrack) {}

// writeCreds writes relay client credentials ("token --relay"'s output)
// to a file of the test's and returns its path.
func writeCreds(t *testing.T, b []byte) string {
	t.Helper()
	creds := filepath.Join(t.TempDir(), "relay.creds")
	if err := os.WriteFile(creds, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return creds
}

// relayEndpoint is a relay endpoint on loopback serving relay clients
// whose tokens key signed, with l as its SFU; the caller runs it.
func relayEndpoint(t *testing.T, l relay.Local, key string) *relay.Endpoint {
	t.Helper()
	e, err := relay.New(relay.Config{Node: 5, Listen: netip.MustParseAddrPort("127.0.0.1:0"), Secret: bytes.Repeat([]byte("s"), 32),
		Local: l, Registry: prometheus.NewRegistry(), ClientAuth: relayauth.Verifier([]byte(key))})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestRelayPublishCommand: "traverse token --relay" prints credentials
// that "traverse relay-publish" publishes with, into the token's room.
func TestRelayPublishCommand(t *testing.T) {
	const key = "0123456789abcdef-relay"
	var out bytes.Buffer
	if err := mintToken(&out, []string{"--token-key", key, "--room", "ingest", "--identity", "cam-1", "--subscribe=false", "--relay"}); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), "\n"); n != 2 {
		t.Fatalf("token --relay printed %d lines", n)
	}
	creds := writeCreds(t, out.Bytes())
	l := &countingLocal{}
	e := relayEndpoint(t, l, key)
	testkit.Run(t, e.Run)
	if err := runRelayPublish(context.Background(), []string{"--relay", e.Addr().String(), "--credentials", creds,
		"--pps", "1000", "--duration", "300ms"}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "the packets at the node", func() bool { return l.media.Load() >= 250 })
	if l.joined.Load() != 1 || l.room.Load() != "ingest" {
		t.Fatalf("joined %d, room %v", l.joined.Load(), l.room.Load())
	}
	for _, args := range [][]string{{"--relay", e.Addr().String()}, {"--credentials", creds}, {"--relay", e.Addr().String(), "--credentials", creds, "--pps", "0"}} {
		if err := runRelayPublish(context.Background(), args); err == nil {
			t.Errorf("relay-publish %q: no error", args)
		}
	}
}

// TestCascadeIDFlag: --cascade-id given on the command line survives
// config.Load setting the flags again (it did not: a flag.Func's String is
// empty, and every node given --cascade-id refused to start).
func TestCascadeIDFlag(t *testing.T) {
	for _, args := range [][]string{{"--cascade-id", "100"}, {"--cascade-id", "0x64"}} {
		fs := flag.NewFlagSet("sfu", flag.ContinueOnError)
		var c sfuConfig
		bindSFU(fs, "", &c)
		if _, err := config.Load(fs, args, &c); err != nil || c.CascadeID != 100 {
			t.Fatalf("%q: id %d, %v", args, c.CascadeID, err)
		}
	}
	fs := flag.NewFlagSet("sfu", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var c sfuConfig
	bindSFU(fs, "", &c)
	if _, err := config.Load(fs, []string{"--cascade-id", "0"}, &c); err == nil {
		t.Fatal("--cascade-id 0 accepted")
	}
}
