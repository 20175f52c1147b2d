package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	pstun "github.com/pion/stun/v3"
	"go.uber.org/goleak"

	"github.com/traverse-rtc/traverse/internal/stun"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// freeTCP returns a TCP port on 127.0.0.1 that was free a moment ago.
func freeTCP(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func stunBinding(t *testing.T, server netip.AddrPort) error {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := pstun.MustBuild(pstun.TransactionID, pstun.BindingRequest)
	buf := make([]byte, 1500)
	for range 20 {
		if _, err := c.WriteToUDPAddrPort(req.Raw, server); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			continue
		}
		m := &pstun.Message{Raw: buf[:n]}
		if err := m.Decode(); err != nil {
			return err
		}
		var xa pstun.XORMappedAddress
		return xa.GetFrom(m)
	}
	return fmt.Errorf("no answer from %s", server)
}

func httpGet(url string) (int, string, error) {
	res, err := testHTTP.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, string(b), err
}

// servePorts are the ports of a `traverse serve` under test, on loopback.
type servePorts struct {
	admin, bus, signal, sfuTCP   string
	stun, turn, sfuUDP, sip, rtp int
}

func newServePorts(t *testing.T) servePorts {
	return servePorts{admin: freeTCP(t), bus: freeTCP(t), signal: freeTCP(t), sfuTCP: freeTCP(t),
		stun: testkit.FreePorts(t, 2), turn: testkit.FreePorts(t, 2), sfuUDP: testkit.FreePorts(t, 2), sip: testkit.FreePorts(t, 2), rtp: testkit.FreePorts(t, 2)}
}

// args are serve's flags for p, with TURN's relay ports and the SIP
// gateway's inside ports in the ranges given (a range per test: the ports
// of a serve that just stopped may still be held), then extra flags (a
// flag given again takes its last value).
func (p servePorts) args(relayPorts, insidePorts string, extra ...string) []string {
	return append([]string{
		"--admin", p.admin, "--log-level", "error",
		"--bus-listen", p.bus,
		"--stun-listen", lo(p.stun), "--stun-other-address", "", "--stun-tls-listen", "",
		"--turn-listen", lo(p.turn), "--turn-relay-ports", relayPorts,
		"--sfu-udp", lo(p.sfuUDP), "--sfu-tcp", p.sfuTCP,
		"--signal-http", p.signal,
		"--sipgw-sip", lo(p.sip), "--sipgw-rtp", lo(p.rtp), "--sipgw-rtcp", lo(p.rtp + 1),
		"--sipgw-inside-ports", insidePorts, "--sipgw-sip-tls", "",
	}, extra...)
}

// rfc5780 are the flags of serve's STUN second address (127.0.0.2).
func (p servePorts) rfc5780() []string {
	return []string{"--stun-other-address", "127.0.0.2", "--stun-other-port", strconv.Itoa(p.stun + 1)}
}

func lo(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// TestServe runs every role in one process as "traverse serve" does, on
// free ports: the process becomes ready, every role exports its metrics,
// STUN and TURN answer, the demo page is served, and a cancel stops it all
// within 5 s with every media port released.
func TestServe(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	p := newServePorts(t)
	adminAddr, signalAddr, sfuTCP := p.admin, p.signal, p.sfuTCP
	stunPort, turnPort, sfuUDP, sipPort, rtpPort := p.stun, p.turn, p.sfuUDP, p.sip, p.rtp
	args := p.args("42000-42099", "43000-43999", append(p.rfc5780(), "--log-level", "warn")...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- runServe(ctx, args) }()

	waitReady(t, adminAddr, 30*time.Second, done, nil)
	_, metrics, err := httpGet("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"stun", "turn", "sfu", "signal", "sipgw"} {
		if !strings.Contains(metrics, "\ntraverse_"+role+"_") {
			t.Errorf("/metrics has no traverse_%s_ metric", role)
		}
	}
	for _, s := range []int{stunPort, turnPort} {
		if err := stunBinding(t, netip.MustParseAddrPort(lo(s))); err != nil {
			t.Errorf("STUN Binding to %s: %v", lo(s), err)
		}
	}
	if code, body, err := httpGet("http://" + signalAddr + "/"); err != nil || code != 200 || !strings.Contains(body, "<") {
		t.Errorf("demo page: %d %v", code, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			var b strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
			t.Fatalf("serve: %v; goroutines:\n%s", err, b.String())
		}
	case <-time.After(6 * time.Second):
		var b strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		t.Fatalf("serve did not stop within 5s; goroutines:\n%s", b.String())
	}
	for _, p := range []int{stunPort, turnPort, sfuUDP, sipPort, rtpPort, rtpPort + 1} {
		c, err := net.ListenPacket("udp", lo(p))
		if err != nil {
			t.Errorf("UDP %s still held after shutdown: %v", lo(p), err)
			continue
		}
		c.Close()
	}
	for _, a := range []string{adminAddr, sfuTCP, signalAddr, lo(stunPort), lo(turnPort)} {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Errorf("TCP %s still held after shutdown: %v", a, err)
			continue
		}
		ln.Close()
	}
}

// The serve YAML file: common keys at the top, one section per role whose
// keys are the role's flag names; an unknown section is an error.
func TestServeConfigFile(t *testing.T) {
	dir := t.TempDir()
	file := dir + "/serve.yaml"
	yamlText := "admin: 127.0.0.1:19090\nlog:\n  format: json\nstun:\n  listen: 127.0.0.1:13478\n  other-port: 13480\nturn:\n  realm: example.org\n"
	if err := os.WriteFile(file, []byte(yamlText), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := serveConfig{roles: map[string]any{}}
	fs := newFlagSet("serve", "serve")
	cfg.flags(fs)
	for _, r := range serveRoles {
		cfg.roles[r.name] = r.bind(fs, r.name+"-")
	}
	if _, _, err := load(fs, []string{"--config", file, "--turn-realm", "flag.example"}, &cfg, &cfg.common); err != nil {
		t.Fatal(err)
	}
	if cfg.Admin != "127.0.0.1:19090" || cfg.Log.Format != "json" {
		t.Errorf("common keys: %+v", cfg.common)
	}
	if st := cfg.roles["stun"].(*stun.Config); st.Listen.String() != "127.0.0.1:13478" || st.OtherPort != 13480 || st.OtherAddress.String() != "127.0.0.2" {
		t.Errorf("stun section: listen %s other %s:%d", st.Listen, st.OtherAddress, st.OtherPort)
	}
	if tc := cfg.roles["turn"].(*turnConfig); tc.Realm != "flag.example" {
		t.Errorf("turn realm %q: the flag must win over the file", tc.Realm)
	}

	if err := os.WriteFile(file, []byte("nosuchrole:\n  x: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg = serveConfig{roles: map[string]any{}}
	fs = newFlagSet("serve", "serve")
	cfg.flags(fs)
	for _, r := range serveRoles {
		cfg.roles[r.name] = r.bind(fs, r.name+"-")
	}
	if _, _, err := load(fs, []string{"--config", file}, &cfg, &cfg.common); err == nil || !strings.Contains(err.Error(), "nosuchrole") {
		t.Errorf("unknown section: %v", err)
	}
}
