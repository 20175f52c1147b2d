package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	pstun "github.com/pion/stun/v3"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/testkit"
	"github.com/traverse-rtc/traverse/internal/tlsutil"
	"github.com/traverse-rtc/traverse/internal/turn/turntest"
)

// runServeUntilReady runs serve with args until the test ends; it returns
// once /readyz on adminAddr answers 200.
func runServeUntilReady(t *testing.T, adminAddr string, args []string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runServe(ctx, args) }()
	t.Cleanup(func() { testkit.Stop(t, "serve", cancel, done) })
	waitReady(t, adminAddr, 30*time.Second, done, nil)
}

// waitReady polls /readyz on adminAddr until it answers 200, failing t
// after d or once the process reports on stopped (nil: never). detail,
// when set, adds to the failure message.
func waitReady(t *testing.T, adminAddr string, d time.Duration, stopped <-chan error, detail func() string) {
	t.Helper()
	more := func() string {
		if detail == nil {
			return ""
		}
		return "\n" + detail()
	}
	deadline := time.Now().Add(d)
	for {
		code, body, err := httpGet("http://" + adminAddr + "/readyz")
		if err == nil && code == 200 {
			return
		}
		select {
		case err := <-stopped:
			t.Fatalf("stopped before ready: %v%s", err, more())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after %v: %d %q %v%s", d, code, body, err, more())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// servePorts are free loopback ports for serve's listeners.
func TestServeBusRefusesStrangers(t *testing.T) {
	p := newServePorts(t)
	runServeUntilReady(t, p.admin, p.args("44000-44099", "45000-45099"))
	url := "nats://" + p.bus
	if nc, err := nats.Connect(url, nats.NoReconnect()); err == nil {
		nc.Close()
		t.Error("serve's bus accepted a client without credentials")
	} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Errorf("refusal: %v", err)
	}
	kp, _ := nkeys.CreateUser()
	pub, _ := kp.PublicKey()
	if nc, err := nats.Connect(url, nats.NoReconnect(), nats.Nkey(pub, kp.Sign)); err == nil {
		nc.Close()
		t.Error("serve's bus accepted an unknown nkey")
	}
	_, metrics, err := httpGet("http://" + p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"traverse_bus_auth_failures_total 2", `traverse_bus_logins_total{role="sfu"} 1`,
		`traverse_bus_logins_total{role="signal"} 1`, "traverse_bus_insecure_listen 0"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// /readyz was green, and signal is ready only once it heard a node's
	// announcement: serve's node and signal spoke over the authenticated bus.
	if code, _, err := httpGet("http://" + p.signal + "/token?room=r1"); err != nil || code != 200 {
		t.Errorf("demo token: %d %v", code, err)
	}
}

// TestServeTurnRefusesOwnPorts: with serve's demo TURN user and loopback
// peers allowed (serve's defaults), an allocation reaches a loopback TCP
// and UDP echo peer, but not the process's own listeners: RFC 6062 Connect
// to the bus and the admin port is refused, and UDP to serve's STUN and SFU
// ports gets nothing back. Before this change, Connect to both succeeded.
func TestServeTurnRefusesOwnPorts(t *testing.T) {
	p := newServePorts(t)
	runServeUntilReady(t, p.admin, p.args("44000-44099", "45000-45099"))
	turnAddr := lo(p.turn)

	// TCP: a control connection, a TCP allocation, Connect.
	c := turntest.TCPClient(t, turnAddr, "demo", "demo", "traverse")
	alloc, err := c.AllocateTCP()
	if err != nil {
		t.Fatalf("allocate tcp: %v", err)
	}
	defer alloc.Close()
	echo, _ := turntest.TCPEcho(t)
	conn, err := alloc.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(echo))
	if err != nil {
		t.Fatalf("control: a loopback echo peer through the relay: %v", err)
	}
	conn.Close()
	for name, addr := range map[string]string{"bus": p.bus, "admin": p.admin, "signal": p.signal} {
		ap := netip.MustParseAddrPort(addr)
		conn, err := alloc.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(ap))
		if err == nil {
			conn.Close()
			t.Errorf("TURN relayed TCP to serve's own %s port %s", name, addr)
		} else if !strings.Contains(err.Error(), "403") {
			t.Errorf("Connect to the %s port: %v, want 403", name, err)
		}
	}

	// UDP: an allocation that reaches a loopback echo peer, not serve's
	// STUN server (which answers anything) nor its SFU port.
	uclient := turntest.Client(t, turnAddr, "demo", "demo", "traverse", nil)
	relay, err := uclient.Allocate()
	if err != nil {
		t.Fatalf("allocate udp: %v", err)
	}
	defer relay.Close()
	udpEchoPeer := turntest.UDPEcho(t).LocalAddr().(*net.UDPAddr).AddrPort()
	req := pstun.MustBuild(pstun.TransactionID, pstun.BindingRequest)
	for _, to := range []int{p.stun, p.sfuUDP} {
		_, _ = relay.WriteTo(req.Raw, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: to})
	}
	if _, err := relay.WriteTo([]byte("ping"), net.UDPAddrFromAddrPort(udpEchoPeer)); err != nil {
		t.Fatalf("control: write to the echo peer: %v", err)
	}
	// The echo comes back, and then for half a second more whatever
	// serve's own sockets would answer (at once, on the same loopback).
	buf := make([]byte, 1500)
	_ = relay.SetReadDeadline(time.Now().Add(5 * time.Second))
	gotEcho := false
	for {
		n, from, err := relay.ReadFrom(buf)
		if err != nil {
			if !gotEcho {
				t.Fatalf("control: no echo through the relay: %v", err)
			}
			break
		}
		ua := from.(*net.UDPAddr)
		switch {
		case ua.Port == int(udpEchoPeer.Port()):
			if !gotEcho && string(buf[:n]) == "ping" {
				gotEcho = true
				_ = relay.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			}
		default:
			t.Errorf("TURN relayed UDP to serve's own port %d, which answered %d bytes", ua.Port, n)
		}
	}
}

// traverse bus writes one credentials file per role (0600); a separate
// node connects with its file and gets its node id from it; another node's
// id with that file is refused before connecting.
func TestBusCommandCredentials(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "creds")
	busAddr := freeTCP(t)
	adminAddr := freeTCP(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runBus(ctx, []string{"--listen", busAddr, "--creds-dir", dir, "--node", "n1", "--admin", adminAddr, "--log-level", "error"})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("traverse bus: %v", err)
		}
	}()
	waitReady(t, adminAddr, 10*time.Second, nil, nil)
	for _, f := range []string{"signal.creds", "sfu-n1.creds"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, st, err)
		}
	}
	c := &sfuConfig{natsClientConfig: natsClientConfig{NATS: "nats://" + busAddr, NATSCreds: filepath.Join(dir, "sfu-n1.creds")}}
	cfg, err := c.nodeBus()
	if err != nil || c.NodeID != "n1" {
		t.Fatalf("node id from the file: %q %v", c.NodeID, err)
	}
	bc, err := bus.Connect(cfg, nil)
	if err != nil {
		t.Fatalf("node with its file: %v", err)
	}
	bc.Close()
	c.NodeID = "n2"
	if _, err := c.nodeBus(); err == nil {
		t.Error("node n2 accepted with n1's credentials")
	}
	if _, err := bus.Connect(bus.Config{URLs: []string{"nats://" + busAddr}}, nil); err == nil {
		t.Error("traverse bus accepted a client without credentials")
	}
	if err := runBus(context.Background(), []string{"--listen", "0.0.0.0:0", "--insecure-no-auth", "--admin", ""}); !errors.Is(err, bus.ErrInsecure) {
		t.Errorf("no auth on 0.0.0.0: %v", err)
	}
}

// serve with --bus-tls-cert: the bus requires TLS, serve's own roles trust
// its certificate in-process (serve becomes ready: signal heard the node's
// announcement), a client that does not trust it is refused, and a separate
// process with the file of --bus-creds-dir and the CA connects.
func TestServeBusTLS(t *testing.T) {
	cert, err := tlsutil.SelfSigned("traverse bus test")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "bus.pem"), filepath.Join(dir, "bus-key.pem")
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	p := newServePorts(t)
	runServeUntilReady(t, p.admin, append(p.args("44000-44099", "45000-45099"), "--bus-tls-cert", certFile, "--bus-tls-key", keyFile,
		"--bus-creds-dir", filepath.Join(dir, "creds")))
	if code, _, err := httpGet("http://" + p.signal + "/token?room=r1"); err != nil || code != 200 {
		t.Errorf("demo token: %d %v", code, err)
	}
	_, metrics, err := httpGet("http://" + p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(metrics, `traverse_bus_logins_total{role="sfu"} 1`) {
		t.Error("serve's node did not log in over TLS")
	}
	creds := filepath.Join(dir, "creds", "signal.creds")
	if c, err := bus.Connect(bus.Config{URLs: []string{"nats://" + p.bus}, CredsFile: creds}, nil); err == nil {
		c.Close()
		t.Error("connected without trusting the bus's certificate")
	}
	c, err := bus.Connect(bus.Config{URLs: []string{"nats://" + p.bus}, CredsFile: creds, TLSCA: certFile}, nil)
	if err != nil {
		t.Fatalf("a separate signal process with the file and the CA: %v", err)
	}
	c.Close()
}
