package main

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pstun "github.com/pion/stun/v3"

	"github.com/traverse-rtc/traverse/internal/connlimit"
)

// stunBindingTCP sends one Binding request over TCP (RFC 8489 section
// 6.2.2) and checks the answer carries XOR-MAPPED-ADDRESS.
func stunBindingTCP(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	req := pstun.MustBuild(pstun.TransactionID, pstun.BindingRequest)
	if _, err := c.Write(req.Raw); err != nil {
		return err
	}
	hdr := make([]byte, 20)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return err
	}
	body := make([]byte, binary.BigEndian.Uint16(hdr[2:4]))
	if _, err := io.ReadFull(c, body); err != nil {
		return err
	}
	m := &pstun.Message{Raw: append(hdr, body...)}
	if err := m.Decode(); err != nil {
		return err
	}
	var xa pstun.XORMappedAddress
	return xa.GetFrom(m)
}

func openFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// TestServeSignalFloodBudget mounts issue 10's flood on traverse serve with
// a descriptor limit of 4,096: idle connections to the signaling port from
// many addresses (so no per-address cap stops them) until the process is
// near its limit. Signal stops at its descriptor budget, so /healthz and
// STUN over TCP and UDP still answer meanwhile; once the flood ends, a
// signaling client connects again. Without the budgets, the flood's server
// ends and the test's own client ends exhaust the table and those fail.
func TestServeSignalFloodBudget(t *testing.T) {
	// Lowering the hard limit cannot be undone without CAP_SYS_RESOURCE:
	// the attack runs in a child process of its own.
	if os.Getenv("TRAVERSE_FLOOD_CHILD") == "" {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestServeSignalFloodBudget$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "TRAVERSE_FLOOD_CHILD=1")
		out, err := cmd.CombinedOutput()
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "serve_flood_test.go") {
				t.Log(strings.TrimSpace(line))
			}
		}
		if err != nil {
			t.Fatalf("the flood test failed: %v", err)
		}
		return
	}
	const limit = 4096
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: limit, Max: limit}); err != nil {
		t.Fatal(err)
	}

	adminAddr := freeTCP(t)
	stunPort := freePorts(t)
	turnPort := freePorts(t)
	sfuUDP, sfuTCP := freePorts(t), freeTCP(t)
	sipPort, rtpPort := freePorts(t), freePorts(t)
	signalAddr := freeTCP(t)
	lo := func(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }
	args := []string{
		"--admin", adminAddr, "--log-level", "error",
		"--bus-listen", "127.0.0.1:0",
		"--stun-listen", lo(stunPort), "--stun-other-address", "127.0.0.2", "--stun-other-port", strconv.Itoa(stunPort + 1),
		"--stun-tls-listen", "",
		"--turn-listen", lo(turnPort), "--turn-relay-ports", "46000-46099",
		"--sfu-udp", lo(sfuUDP), "--sfu-tcp", sfuTCP,
		"--signal-http", signalAddr,
		"--sipgw-sip", lo(sipPort), "--sipgw-rtp", lo(rtpPort), "--sipgw-rtcp", lo(rtpPort + 1),
		"--sipgw-inside-ports", "47000-47099", "--sipgw-sip-tls", "",
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runServe(ctx, args) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("serve did not stop")
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if code, _, err := httpGet("http://" + adminAddr + "/readyz"); err == nil && code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not ready after 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The flood: from 127.0.1.1 on, 80 connections per address (under the
	// per-address cap); as many as leave 400 descriptors free if signal
	// holds no more than its budget, so that without the budget the
	// server's ends alone would exhaust the table.
	base := openFDs(t)
	budget := connlimit.Split(limit, fdShares...)["signal"]
	flood := limit - base - budget - 400
	t.Logf("descriptors in use before the flood: %d; signal's budget %d; flood: %d connections", base, budget, flood)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	var dialErr error
	stop := time.Now().Add(60 * time.Second)
	for i := 0; i < flood && time.Now().Before(stop); i++ {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1+byte(i/80/250), byte(1+i/80%250))}}
		c, err := d.Dial("tcp", signalAddr)
		if err != nil {
			dialErr = err // the table is full: the attack has won
			break
		}
		conns = append(conns, c)
	}
	t.Logf("flood: %d connections held by the test, process descriptors %d of %d, first dial error %v",
		len(conns), openFDs(t), limit, dialErr)

	// Meanwhile the other roles answer.
	if code, _, err := httpGet("http://" + adminAddr + "/healthz"); err != nil || code != 200 {
		t.Errorf("/healthz during the flood: %d %v", code, err)
	}
	if err := stunBindingTCP(lo(stunPort)); err != nil {
		t.Errorf("STUN over TCP during the flood: %v", err)
	}
	if err := stunBinding(t, netip.MustParseAddrPort(lo(stunPort))); err != nil {
		t.Errorf("STUN over UDP during the flood: %v", err)
	}
	if dialErr != nil {
		t.Errorf("the flood exhausted the process's descriptors: %v", dialErr)
	}

	for _, c := range conns {
		_ = c.Close()
	}
	conns = nil
	deadline = time.Now().Add(10 * time.Second)
	for {
		code, _, err := httpGet("http://" + signalAddr + "/")
		if err == nil && code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("signal after the flood: %d %v", code, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
