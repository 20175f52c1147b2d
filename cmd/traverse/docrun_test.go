package main

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relayauth"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/testkit"
	"github.com/traverse-rtc/traverse/internal/tlsutil"
)

// The doc run: every command line TestDocCommands checks also runs, as a
// process of its own, with its placeholders (ADDR, HOST:PORT, URL, DIR/...,
// KEY, SECRET, ...) and its addresses replaced by working values on free
// loopback ports, against peers the test starts (a bus with credentials, an
// RFC 5780 STUN server, a "traverse serve" for the load generator, an SFU
// to drain). A server role must become ready (/readyz on its admin port)
// and stop on SIGTERM within 5 s with status 0; a one-shot command must
// exit 0 with the output it promises. Counts and durations of the load and
// failover commands are capped to keep the run to seconds.

// docRunEnv holds the stand-ins the documented commands run against.
type docRunEnv struct {
	t        *testing.T
	mu       sync.Mutex
	used     map[int]bool // ports handed out
	creds    string       // the shared bus's --creds-dir
	busURL   string       // the shared bus (JetStream on, for the controller)
	nodes    map[string]bool
	relays   map[string]bool
	dists    map[string]bool
	stun     string // RFC 5780 STUN server: 127.0.0.1:P, other address 127.0.0.2
	tokenKey string
	seed     string // relay grant seed (signal) and its public key (nodes)
	grantKey string
	cert     string // self-signed TLS certificate and key files
	key      string
	serveWS  string // ws://.../ws of the stand-in serve
	serveBus string
	serveDir string // its --bus-creds-dir
	serveSFU string // its SFU node
	drainSFU string // an SFU node on the shared bus for "sfu drain"
	// relayAddr is the relay port of the "keep" SFU node, which takes
	// relay clients with tokenKey's tokens (relay-publish, relay-subscribe)
	relayAddr string
}

const (
	docSecret     = "doc-test-secret-0123456789"
	docAdminToken = "doc-test-admin-token-0123456789"
)

// port returns a free loopback port P (P and P+1 free on 127.0.0.1 and
// 127.0.0.2, for UDP and TCP) no other command of the run was given.
func (e *docRunEnv) port(n int) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	for {
		p := testkit.FreePorts(e.t, n+1, netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"))
		clash := false
		for q := p; q <= p+n; q++ {
			clash = clash || e.used[q]
		}
		if clash {
			continue
		}
		for q := p; q <= p+n; q++ {
			e.used[q] = true
		}
		return p
	}
}

func (e *docRunEnv) addr() string { return "127.0.0.1:" + strconv.Itoa(e.port(1)) }

func (e *docRunEnv) portRange() string {
	p := e.port(16)
	return fmt.Sprintf("%d-%d", p, p+15)
}

// labName is a lab name no other run (of this test or another) uses.
func (e *docRunEnv) labName() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return "d" + hex.EncodeToString(b[:])
}

// docRun is one documented command line made runnable.
type docRun struct {
	where  string   // file:line of the first line documenting it
	argv   []string // the command run
	server bool     // a role: ready, then SIGTERM
	admin  string   // its admin address
	expect *regexp.Regexp
	before func(t *testing.T)             // a stand-in it needs
	after  func(t *testing.T, out string) // more checks once done
}

// oneShot are the commands (and subcommands) that do their work and exit.
func oneShot(args []string) bool {
	switch args[0] {
	case "version", "token", "natcheck", "lab", "load", "relay-publish", "relay-subscribe":
		return true
	case "sfu":
		return len(args) > 1 && args[1] == "drain"
	}
	for _, a := range args {
		if a == "--keygen" || a == "-keygen" || a == "--check-config" {
			return true
		}
	}
	return false
}

// capped are the flags whose documented value is lowered for the run.
var capped = map[string]string{"duration": "2s", "rooms": "1", "publishers": "2", "subscribers": "2", "kills": "2"}

// plan turns documented args into a runnable command; an error says which
// part has no stand-in (document it as illustrative, or teach this test).
func (e *docRunEnv) plan(c docCommand) (*docRun, error) {
	if c.args[0] == "lab" && strings.Contains(c.text, "up|list|") {
		// The synopsis of them all: the one that runs alone.
		return &docRun{argv: []string{"lab", "list"}}, nil
	}
	fs, used := commandFlags(e.t, c.args)
	r := &docRun{argv: append([]string(nil), c.args[:used]...), server: !oneShot(c.args)}
	if fs == nil { // lab list, down, clean
		switch {
		case len(c.args) == 3 && c.args[1] == "down" && c.args[2] == "NAME":
			name := e.labName()
			r.argv = []string{"lab", "down", name}
			r.before = func(t *testing.T) {
				if out, err := runOnce(t, "lab", "up", "--name", name, "--no-stun", "routed"); err != nil {
					t.Fatalf("lab up %s: %v\n%s", name, err, out)
				}
			}
			r.expect = regexp.MustCompile(`lab ` + name + ` is down`)
		case len(c.args) == 2 && c.args[1] == "list":
			r.argv = c.args
		default:
			return nil, fmt.Errorf("lab %s is not run here", c.args[1])
		}
		return r, nil
	}
	given := map[string]bool{}
	var pos []string
	args := c.args[used:]
	// The flags documented, values replaced.
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "..." || a == "flags" || strings.HasSuffix(a, "]...") && !strings.HasPrefix(a, "-") {
			continue
		}
		if !strings.HasPrefix(a, "-") {
			pos = append(pos, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f := fs.Lookup(name)
		if f == nil {
			return nil, fmt.Errorf("no flag --%s", name)
		}
		if b, ok := f.Value.(boolFlag); ok && b.IsBoolFlag() {
			given[name] = true
			r.argv = append(r.argv, a)
			continue
		}
		if !hasValue {
			i++
			value = args[i]
		}
		value = strings.TrimSuffix(value, "]...")
		v, err := e.value(c, r, name, value, f)
		if err != nil {
			return nil, err
		}
		given[name] = true
		r.argv = append(r.argv, "--"+name, v)
	}
	// What the command needs that the line leaves to the reader ("...")
	// or to defaults that would clash with other tests: free ports for
	// every address flag with a default, the peers the role talks to.
	var missing []string
	fs.VisitAll(func(f *flag.Flag) {
		if !given[f.Name] {
			missing = append(missing, f.Name)
		}
	})
	sort.Strings(missing)
	for _, name := range missing {
		f := fs.Lookup(name)
		v, ok := e.fill(c, r, given, name, f)
		if ok {
			r.argv = append(r.argv, "--"+name, v)
		}
	}
	if r.server {
		if r.admin == "" {
			return nil, fmt.Errorf("a role without --admin")
		}
	}
	// Positional arguments.
	for _, p := range pos {
		switch {
		case c.args[0] == "natcheck" && placeholder.MatchString(p):
			r.argv = append(r.argv, e.stun)
		case c.args[0] == "sfu" && p == "NODE":
			r.argv = append(r.argv, e.drainSFU)
		case placeholder.MatchString(p):
			return nil, fmt.Errorf("no stand-in for %s", p)
		default:
			r.argv = append(r.argv, p)
		}
	}
	switch {
	case c.args[0] == "version":
		r.expect = regexp.MustCompile(`go1\.`)
	case c.args[0] == "token" && slices.Contains(r.argv, "--relay"):
		// The token, then the relay client's secret in hex.
		r.expect = regexp.MustCompile(`^[A-Za-z0-9_=-]+\.[A-Za-z0-9_.=-]+\n[0-9a-f]{64}\s*$`)
	case c.args[0] == "token":
		r.expect = regexp.MustCompile(`^[A-Za-z0-9_=-]+\.[A-Za-z0-9_.=-]+\s*$`)
	case c.args[0] == "natcheck":
		r.expect = regexp.MustCompile(`(?i)mapping`)
	case c.args[0] == "sfu" && r.argv[1] == "drain":
		r.expect = regexp.MustCompile(`node \S+ is draining`)
	case given["keygen"]:
		r.expect = regexp.MustCompile(`(?m)^relay-grant-seed: \S+\ngrant-key: \S+`)
	case c.args[0] == "lab" && r.argv[1] == "failover":
		r.expect = regexp.MustCompile(`p50`)
	case c.args[0] == "lab" && r.argv[1] == "up":
		r.expect = regexp.MustCompile(`lab \S+ is up`)
	case c.args[0] == "relay-publish":
		r.expect = regexp.MustCompile(`published \d+ packets`)
	case c.args[0] == "relay-subscribe":
		r.expect = regexp.MustCompile(`received \d+ tracks of room demo`)
	}
	return r, nil
}

// value is the stand-in for a documented flag value.
func (e *docRunEnv) value(c docCommand, r *docRun, name, value string, f *flag.Flag) (string, error) {
	kind, _ := flag.UnquoteUsage(f)
	ph := placeholder.MatchString(value) || value == "..."
	base := name
	if i := strings.LastIndex(name, "-"); i >= 0 && (strings.HasPrefix(name, "bus-") || strings.HasPrefix(name, "signal-") || strings.HasPrefix(name, "sfu-")) {
		base = name[strings.Index(name, "-")+1:]
		_ = i
	}
	if v, ok := capped[name]; ok {
		return v, nil
	}
	relayClient := c.args[0] == "relay-publish" || c.args[0] == "relay-subscribe"
	switch {
	case relayClient && name == "relay":
		return e.relayAddr, nil
	case relayClient && name == "credentials":
		return e.relayCredentials(c.args[0])
	case name == "stun":
		return e.stun, nil
	case name == "admin":
		r.admin = e.addr()
		return r.admin, nil
	case kind == "host:port" || kind == "ip:port":
		return e.addr(), nil
	case name == "routes":
		return "nats://" + e.addr(), nil
	case base == "nats" && c.args[0] == "load":
		return e.serveBus, nil
	case base == "nats":
		return e.busURL, nil
	case base == "nats-creds" && c.args[0] == "load":
		return filepath.Join(e.serveDir, "signal.creds"), nil
	case base == "nats-creds":
		return e.credsFile(c, filepath.Base(value)), nil
	case strings.HasSuffix(name, "-dir"):
		return e.t.TempDir(), nil
	case strings.HasSuffix(name, "secret-file"): // a path on the operator's machine, or a placeholder
		f := filepath.Join(e.t.TempDir(), "secret")
		if err := os.WriteFile(f, []byte(docSecret+docSecret), 0o600); err != nil { // at least 32 bytes
			return "", err
		}
		return f, nil
	case strings.HasSuffix(name, "tls-cert"):
		return e.cert, nil
	case strings.HasSuffix(name, "tls-key"):
		return e.key, nil
	case base == "token-key" && ph:
		return e.tokenKey, nil
	case name == "grant-key" && ph:
		return e.grantKey, nil
	case base == "relay-grant-seed" && ph:
		return e.seed, nil
	case strings.HasSuffix(name, "webhook-url") && ph:
		return "http://" + e.addr() + "/webhook", nil
	case strings.HasSuffix(name, "secret") || strings.HasSuffix(name, "-key") && ph:
		return docSecret, nil
	case strings.HasSuffix(name, "admin-token") || name == "api-token":
		return docAdminToken, nil
	case name == "url" && c.args[0] == "load":
		return e.serveWS, nil
	case name == "node" && c.args[0] == "load":
		return e.serveSFU, nil
	case strings.HasSuffix(kind, "LOW-HIGH") || kind == "LOW-HIGH":
		return e.portRange(), nil
	case kind == "IP" && ph:
		return "127.0.0.1", nil
	case name == "local" && ph:
		return "127.0.0.1", nil
	case name == "period" && ph:
		return "1s", nil
	case name == "mapping-timeout" && ph:
		return "30s", nil
	case !ph:
		return value, nil
	}
	stand := map[string]string{"realm": "example.org", "room": "demo", "identity": "alice",
		"user": "alice:doc-test-password", "node": "doc1", "relay-node": "r1", "id": "r1", "group": "g1"}
	if v, ok := stand[name]; ok {
		return v, nil
	}
	if name == "name" && c.args[0] == "lab" {
		lab := e.labName()
		r.after = func(t *testing.T, _ string) {
			if out, err := runOnce(t, "lab", "down", lab); err != nil {
				t.Errorf("lab down %s: %v\n%s", lab, err, out)
			}
		}
		return lab, nil
	}
	return "", fmt.Errorf("no stand-in for --%s %s", name, value)
}

// relayCredentials writes a relay client's credentials (what "traverse
// token --relay" prints) for the room demo, identity who, with both rights.
func (e *docRunEnv) relayCredentials(who string) (string, error) {
	tok, sec, err := relayauth.Mint([]byte(e.tokenKey), signal.Claims{Room: "demo", Identity: who, Publish: true, Subscribe: true,
		Expires: time.Now().Add(time.Hour).Unix()})
	if err != nil {
		return "", err
	}
	f := filepath.Join(e.t.TempDir(), who+".creds")
	return f, os.WriteFile(f, []byte(tok+"\n"+hex.EncodeToString(sec)+"\n"), 0o600)
}

// credsFile is the shared bus's credentials file a documented
// DIR/NAME.creds stands for; ID (a node's) becomes the command's node.
func (e *docRunEnv) credsFile(c docCommand, name string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	id := ""
	for i, a := range c.args {
		if (a == "--id" || a == "--node-id") && i+1 < len(c.args) && !placeholder.MatchString(c.args[i+1]) {
			id = c.args[i+1]
		}
	}
	if id == "" {
		id = fmt.Sprintf("doc%d", len(e.nodes)+len(e.relays)+1)
	}
	name = strings.ReplaceAll(name, "ID", id)
	switch {
	case strings.HasPrefix(name, "sfu-"):
		e.nodes[strings.TrimSuffix(strings.TrimPrefix(name, "sfu-"), ".creds")] = true
	case strings.HasPrefix(name, "relay-"):
		e.relays[strings.TrimSuffix(strings.TrimPrefix(name, "relay-"), ".creds")] = true
	case strings.HasPrefix(name, "distribute-"):
		e.dists[strings.TrimSuffix(strings.TrimPrefix(name, "distribute-"), ".creds")] = true
	}
	return filepath.Join(e.creds, name)
}

// fill returns a value for a flag the documented line does not give, when
// the run needs one.
func (e *docRunEnv) fill(c docCommand, r *docRun, given map[string]bool, name string, f *flag.Flag) (string, bool) {
	kind, _ := flag.UnquoteUsage(f)
	cmd := c.args[0]
	if cmd == "load" && name == "url" && !given["nats"] && !given["janus"] {
		return e.serveWS, true
	}
	if v, ok := capped[name]; ok && cmd == "load" {
		return v, true
	}
	if !r.server {
		return "", false
	}
	switch {
	case name == "admin":
		r.admin = e.addr()
		return r.admin, true
	case name == "log-level":
		return "warn", true
	case (kind == "host:port") && f.DefValue != "":
		return e.addr(), true
	case kind == "LOW-HIGH" && f.DefValue != "":
		return e.portRange(), true
	case kind == "port" && f.DefValue != "0":
		return strconv.Itoa(e.port(1)), true
	}
	if given["keygen"] {
		return "", false
	}
	switch cmd + " " + name {
	case "turn listen", "stun listen", "bus listen", "signal http", "sfu udp", "sfu tcp", "relay listen",
		"distribute listen", "distribute api", "sipgw sip", "sipgw rtp", "sipgw rtcp", "sipgw upstream":
		return e.addr(), true
	case "turn realm":
		return "example.org", true
	case "turn user":
		if !given["auth-secret"] {
			return "alice:doc-test-password", true
		}
	case "bus creds-dir":
		return e.t.TempDir(), true
	case "signal nats", "sfu nats", "relay nats", "controller nats":
		return e.busURL, true
	case "signal nats-creds":
		return filepath.Join(e.creds, "signal.creds"), true
	case "controller nats-creds":
		return filepath.Join(e.creds, "controller.creds"), true
	case "sfu nats-creds":
		return e.credsFile(c, "sfu-ID.creds"), true
	case "relay nats-creds":
		return e.credsFile(c, "relay-ID.creds"), true
	case "relay id":
		return "r1", true
	case "signal token-key", "serve signal-token-key":
		return e.tokenKey, true
	case "relay grant-key":
		return e.grantKey, true
	case "relay stun":
		return e.stun, true
	case "distribute api-token":
		return docAdminToken, true
	case "sipgw inside-ip":
		return "127.0.0.1", true
	case "sipgw inside-ports":
		return e.portRange(), true
	}
	return "", false
}

// writeTLS writes a self-signed certificate for localhost and its key.
func (e *docRunEnv) writeTLS() {
	cert, err := tlsutil.SelfSigned("localhost", "localhost", "127.0.0.1")
	if err != nil {
		e.t.Fatal(err)
	}
	dir := e.t.TempDir()
	e.cert, e.key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(e.cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(e.key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

// runOnce runs a one-shot command to its end (at most 60 s).
func runOnce(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "TRAVERSE_TEST_MAIN=1")
	var out strings.Builder
	var mu sync.Mutex
	w := writerFunc(func(b []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(b) })
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		return "", err
	}
	err, ok := testkit.AwaitExit(cmd, testkit.Exited(cmd), 60*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if !ok {
		return out.String(), fmt.Errorf("still running after 60s")
	}
	return out.String(), err
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// startReady starts a role and waits for its /readyz.
func startReady(t *testing.T, admin string, args ...string) *child {
	t.Helper()
	c := startChild(t, args...)
	waitReady(t, admin, 30*time.Second, c.exited, c.output)
	return c
}

// TestDocCommandsRun: every documented command line runs as written, its
// placeholders and addresses aside (see docRunEnv).
func TestDocCommandsRun(t *testing.T) {
	start := time.Now()
	e := &docRunEnv{t: t, used: map[int]bool{}, creds: t.TempDir(), nodes: map[string]bool{}, relays: map[string]bool{}, dists: map[string]bool{},
		tokenKey: "doc-test-token-key-0123456789"}
	e.writeTLS()
	out, err := runOnce(t, "relay", "--keygen")
	if err != nil {
		t.Fatalf("relay --keygen: %v\n%s", err, out)
	}
	if m := regexp.MustCompile(`relay-grant-seed: (\S+)\ngrant-key: (\S+)`).FindStringSubmatch(out); m != nil {
		e.seed, e.grantKey = m[1], m[2]
	} else {
		t.Fatalf("relay --keygen printed %q", out)
	}
	e.busURL = "nats://" + e.addr()
	p := e.port(1)
	e.stun = "127.0.0.1:" + strconv.Itoa(p)
	e.drainSFU = "drainme"
	e.nodes[e.drainSFU] = true
	e.relayAddr = e.addr()
	relaySecret := filepath.Join(t.TempDir(), "cascade.secret")
	if err := os.WriteFile(relaySecret, []byte(docSecret+docSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	e.nodes["keep"] = true // the SFU node that makes the signal commands ready
	serveHTTP := e.addr()
	e.serveWS, e.serveBus, e.serveDir, e.serveSFU = "ws://"+serveHTTP+"/ws", "nats://"+e.addr(), t.TempDir(), "sfu-doc"

	// Plan every distinct line.
	files, _ := filepath.Glob("../../docs/*.md")
	files = append([]string{"../../README.md"}, files...)
	var runs []*docRun
	seen := map[string]bool{}
	for _, file := range files {
		for _, c := range docCommands(t, file) {
			key := strings.Join(c.args, "\x00")
			if seen[key] || placeholder.MatchString(c.args[0]) {
				continue
			}
			seen[key] = true
			where := filepath.Base(file) + ":" + itoa(c.line)
			r, err := e.plan(c)
			if err != nil {
				t.Errorf("%s: traverse %s: cannot run: %v (mark it \"(illustrative)\" with the reason, or give it a stand-in here)", where, c.text, err)
				continue
			}
			r.where = where
			runs = append(runs, r)
		}
	}
	if len(runs) < 20 {
		t.Fatalf("only %d command lines to run: is the parser broken?", len(runs))
	}
	// Lines that pass TestDocCommands but do not work: the run must fail
	// them (a short key, an address not on this host, credentials of
	// another node).
	var drift []*docRun
	for _, line := range []string{
		"traverse token --token-key short --room demo --identity alice",
		"traverse stun --listen ADDR --other-address 192.0.2.1",
		"traverse sfu --udp ADDR --tcp ADDR --nats URL --nats-creds DIR/sfu-x.creds --node-id y",
	} {
		c, _ := parseDocCommand(line)
		r, err := e.plan(c)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		r.where = line
		drift = append(drift, r)
	}

	// The peers.
	var nodes []string
	for n := range e.nodes {
		nodes = append(nodes, "--node", n)
	}
	for n := range e.relays {
		nodes = append(nodes, "--relay-node", n)
	}
	for n := range e.dists {
		nodes = append(nodes, "--distribute-node", n)
	}
	var wg sync.WaitGroup
	peers := []func(){
		func() {
			admin := e.addr()
			startReady(t, admin, append([]string{"bus", "--listen", strings.TrimPrefix(e.busURL, "nats://"), "--creds-dir", e.creds,
				"--jetstream-dir", t.TempDir(), "--admin", admin, "--log-level", "warn"}, nodes...)...)
			for _, node := range []string{e.drainSFU, "keep"} {
				admin = e.addr()
				args := []string{"sfu", "--udp", e.addr(), "--tcp", e.addr(), "--nats", e.busURL,
					"--nats-creds", filepath.Join(e.creds, "sfu-"+node+".creds"), "--admin", admin, "--log-level", "warn"}
				if node == "keep" {
					args = append(args, "--cascade-listen", e.relayAddr, "--cascade-secret-file", relaySecret, "--cascade-token-key", e.tokenKey)
				}
				startReady(t, admin, args...)
			}
		},
		func() {
			admin := e.addr()
			startReady(t, admin, "stun", "--listen", e.stun, "--other-address", "127.0.0.2", "--other-port", strconv.Itoa(p+1),
				"--tls-listen", "", "--admin", admin, "--log-level", "warn")
		},
		func() {
			admin := e.addr()
			args := []string{"serve", "--admin", admin, "--bus-listen", strings.TrimPrefix(e.serveBus, "nats://"), "--bus-creds-dir", e.serveDir,
				"--signal-token-key", e.tokenKey, "--sfu-node-id", e.serveSFU, "--signal-http", serveHTTP, "--log-level", "warn"}
			c, _ := parseDocCommand("traverse serve")
			r, err := e.plan(c)
			if err != nil {
				t.Error(err)
				return
			}
			for i := 1; i < len(r.argv); i += 2 { // the other ports
				if n := r.argv[i]; n != "--admin" && n != "--bus-listen" && n != "--log-level" && n != "--signal-token-key" && n != "--signal-http" {
					args = append(args, n, r.argv[i+1])
				}
			}
			startReady(t, admin, args...)
		},
	}
	for _, f := range peers {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("peers ready after %v; %d command lines to run", time.Since(start).Round(time.Millisecond), len(runs))

	sem := make(chan struct{}, 4)
	for _, r := range runs {
		t.Run(r.where, func(t *testing.T) {
			if r.argv[0] == "lab" && os.Geteuid() != 0 {
				t.Skip("traverse lab needs root") // CI runs as root: never skipped there
			}
			t.Parallel()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := r.run(t); err != nil {
				t.Error(err)
			}
		})
	}
	for _, r := range drift {
		t.Run("drift", func(t *testing.T) {
			t.Parallel()
			sem <- struct{}{}
			defer func() { <-sem }()
			err := r.run(t)
			if err == nil {
				t.Errorf("%s: ran, but it cannot work", r.where)
			} else {
				t.Logf("%s: fails as it must: %v", r.where, strings.SplitN(err.Error(), "\n", 3)[:2])
			}
		})
	}
}

// run runs r and returns what it did not do of what its documentation
// says.
func (r *docRun) run(t *testing.T) error {
	began := time.Now()
	cmdline := "traverse " + strings.Join(r.argv, " ")
	if r.before != nil {
		r.before(t)
	}
	if !r.server {
		out, err := runOnce(t, r.argv...)
		if err != nil {
			return fmt.Errorf("%s: %v\n%s", cmdline, err, out)
		}
		if r.expect != nil && !r.expect.MatchString(out) {
			return fmt.Errorf("%s printed %q, want %v", cmdline, out, r.expect)
		}
		if r.after != nil {
			r.after(t, out)
		}
		t.Logf("%s: done in %v", cmdline, time.Since(began).Round(time.Millisecond))
		return nil
	}
	c := &child{cmd: exec.Command(os.Args[0], r.argv...)}
	c.cmd.Env = append(os.Environ(), "TRAVERSE_TEST_MAIN=1")
	c.cmd.Stdout, c.cmd.Stderr = c, c
	if err := c.cmd.Start(); err != nil {
		return err
	}
	c.exited = testkit.Exited(c.cmd)
	defer func() {
		if !c.reaped {
			_ = c.cmd.Process.Kill()
			testkit.AwaitExit(c.cmd, c.exited, 5*time.Second)
		}
	}()
	var exited error
	ready := testkit.Eventually(30*time.Second, func() bool {
		select {
		case err := <-c.exited:
			c.reaped, exited = true, fmt.Errorf("%s: exited before ready: %v\n%s", cmdline, err, c.output())
			return true
		default:
		}
		code, _, err := httpGet("http://" + r.admin + "/readyz")
		return err == nil && code == 200
	})
	if exited != nil {
		return exited
	}
	if !ready {
		return fmt.Errorf("%s: not ready (/readyz on %s) after 30s\n%s", cmdline, r.admin, c.output())
	}
	readyAfter := time.Since(began)
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	err, ok := testkit.AwaitExit(c.cmd, c.exited, 5*time.Second)
	c.reaped = true
	if !ok {
		return fmt.Errorf("%s: did not stop within 5s of SIGTERM\n%s", cmdline, c.output())
	}
	if err != nil {
		return fmt.Errorf("%s: stopped with %v\n%s", cmdline, err, c.output())
	}
	if r.after != nil {
		r.after(t, c.output())
	}
	t.Logf("%s: ready in %v", cmdline, readyAfter.Round(time.Millisecond))
	return nil
}
