package main

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	ossignal "os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pstun "github.com/pion/stun/v3"

	"github.com/traverse-rtc/traverse/internal/connlimit"
	"github.com/traverse-rtc/traverse/internal/testkit"
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

// TestServeSignalFloodBudget mounts issue 10's flood on traverse serve: a
// serve process (a child, with a descriptor limit of 4,096) gets idle
// connections to its signaling port from many addresses (so no
// per-address cap stops them), more than its whole descriptor table. Signal
// stops at its descriptor budget, so meanwhile /healthz and STUN over TCP and
// UDP still answer, the process's descriptors stay below the limit, and once
// the flood ends signal serves again. Without the budgets the flood takes
// every descriptor and the other roles cannot accept or answer.
func TestServeSignalFloodBudget(t *testing.T) {
	if args := os.Getenv("TRAVERSE_FLOOD_SERVE"); args != "" {
		floodChild(t, strings.Split(args, "\x1f"))
		return
	}
	const limit = 4096
	p := newServePorts(t)
	args := p.args("46000-46099", "47000-47099", p.rfc5780()...)
	cmd := exec.Command(os.Args[0], "-test.run=^TestServeSignalFloodBudget$", "-test.count=1")
	cmd.Env = append(os.Environ(), "TRAVERSE_FLOOD_SERVE="+strings.Join(args, "\x1f"), "TRAVERSE_FLOOD_LIMIT="+strconv.Itoa(limit))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := testkit.Exited(cmd)
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err, ok := testkit.AwaitExit(cmd, exited, 10*time.Second); !ok {
			t.Errorf("serve child did not stop on SIGTERM")
		} else if err != nil {
			t.Errorf("serve child: %v\n%s", err, out.String())
		}
	}()
	// Fresh connections for every probe: a kept-alive one would prove
	// nothing about accepting.
	probe := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(url string) (int, error) {
		res, err := probe.Get(url)
		if err != nil {
			return 0, err
		}
		_ = res.Body.Close()
		return res.StatusCode, nil
	}
	waitReady(t, p.admin, 30*time.Second, exited, out.String)
	childFDs := func() int {
		es, err := os.ReadDir("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/fd")
		if err != nil {
			return -1
		}
		return len(es)
	}
	childRSS := func() int { // kB
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/status")
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
				n, _ := strconv.Atoi(f[1])
				return n
			}
		}
		return -1
	}
	base, rss0 := childFDs(), childRSS()
	budget := connlimit.Split(limit, fdShares...)["signal"]

	// The flood: from 127.0.1.1 on, 80 connections per address (under the
	// per-address cap), more than the child's whole table.
	const flood = limit + 500
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	stop := time.Now().Add(60 * time.Second)
	for i := 0; i < flood && time.Now().Before(stop); i++ {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1+byte(i/80/250), byte(1+i/80%250))}}
		c, err := d.Dial("tcp", p.signal)
		if err != nil {
			t.Fatalf("flood dial %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	// Let the child accept what it will: the descriptor count settles.
	last, settled := -2, 0
	for settled < 5 && time.Now().Before(stop) {
		n := childFDs()
		if n == last {
			settled++
		} else {
			last, settled = n, 0
		}
		time.Sleep(50 * time.Millisecond)
	}
	rss := childRSS()
	t.Logf("serve child (limit %d, signal budget %d): descriptors %d before, %d under a flood of %d connections; RSS %d -> %d MB",
		limit, budget, base, last, len(conns), rss0>>10, rss>>10)
	if rss-rss0 > 100<<10 {
		t.Errorf("RSS grew by %d MB under the flood", (rss-rss0)>>10)
	}

	// Meanwhile the other roles answer.
	if code, err := get("http://" + p.admin + "/healthz"); err != nil || code != 200 {
		t.Errorf("/healthz during the flood: %d %v", code, err)
	}
	if err := stunBindingTCP(lo(p.stun)); err != nil {
		t.Errorf("STUN over TCP during the flood: %v", err)
	}
	if err := stunBinding(t, netip.MustParseAddrPort(lo(p.stun))); err != nil {
		t.Errorf("STUN over UDP during the flood: %v", err)
	}
	if last > base+budget+50 {
		t.Errorf("descriptors %d: signal held more than its budget %d", last, budget)
	}

	for _, c := range conns {
		_ = c.Close()
	}
	conns = nil
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, err := get("http://" + p.signal + "/")
		if err == nil && code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("signal after the flood: %d %v", code, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// floodChild runs serve with args under the descriptor limit
// TRAVERSE_FLOOD_LIMIT until SIGTERM.
func floodChild(t *testing.T, args []string) {
	limit, err := strconv.ParseUint(os.Getenv("TRAVERSE_FLOOD_LIMIT"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: limit, Max: limit}); err != nil {
		t.Fatal(err)
	}
	ctx, stop := ossignal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := runServe(ctx, args); err != nil {
		t.Fatal(err)
	}
}
