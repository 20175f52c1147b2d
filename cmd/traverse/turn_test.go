package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/testkit"
	"github.com/traverse-rtc/traverse/internal/turn/turntest"
)

func turnAllocate(t *testing.T, server, user, pass string) error {
	t.Helper()
	// Closed now, not when the test ends: callers try in a loop.
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := turntest.Client(t, server, user, pass, "test", conn)
	defer c.Close()
	relay, err := c.Allocate()
	if err != nil {
		return err
	}
	return relay.Close()
}

// traverse turn serves users from a file, reloads it on SIGHUP and stops
// within 5 s of its context ending.
func TestTurnCommand(t *testing.T) {
	p := testkit.FreePorts(t, 2)
	users := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(users, []byte("# users\nann:one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	addr := "127.0.0.1:" + strconv.Itoa(p)
	relay := testkit.FreePorts(t, 20) // below the ephemeral range: other tests' sockets cannot fill it
	go func() {
		done <- runTurn(ctx, []string{"--listen", addr, "--realm", "test", "--users-file", users,
			"--relay-ports", fmt.Sprintf("%d-%d", relay, relay+19), "--admin", "", "--log-level", "warn"})
	}()
	// Generous deadlines: a loaded machine slows the start and each
	// attempt (pion's client retransmits for a while when nobody answers
	// yet), and must not fail the test.
	deadline := time.Now().Add(20 * time.Second)
	for turnAllocate(t, addr, "ann", "one") != nil {
		if time.Now().After(deadline) {
			t.Fatal("no allocation for the user of the file")
		}
	}
	if err := os.WriteFile(users, []byte("ann:two\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for turnAllocate(t, addr, "ann", "two") != nil {
		if time.Now().After(deadline) {
			t.Fatal("the users file was not reloaded on SIGHUP")
		}
	}
	if turnAllocate(t, addr, "ann", "one") == nil {
		t.Error("the old password still works after the reload")
	}
	testkit.Stop(t, "traverse turn", cancel, done)
}

// TestTurnOffloadFlag: --offload takes ebpf or off only. (The kernel path
// itself is tested in internal/kfast/turnchannel, in network namespaces.)
func TestTurnOffloadFlag(t *testing.T) {
	err := runTurn(context.Background(), []string{"--listen", "127.0.0.1:0", "--realm", "test", "--user", "a:b",
		"--admin", "", "--log-level", "warn", "--offload", "nftables"})
	if err == nil || !strings.Contains(err.Error(), "want ebpf or off") {
		t.Errorf("--offload nftables: %v", err)
	}
}

// TestICEHostPort: a URL handed to browsers names a host they can reach:
// the listener's own, the relay IP in place of an unspecified one, or none.
func TestICEHostPort(t *testing.T) {
	for _, tc := range []struct {
		listen, alt string
		want        string
		ok          bool
	}{
		{"127.0.0.1:3479", "", "127.0.0.1:3479", true},
		{"[::1]:3479", "", "[::1]:3479", true},
		{"0.0.0.0:3479", "192.0.2.7", "192.0.2.7:3479", true},
		{"[::]:3479", "2001:db8::7", "[2001:db8::7]:3479", true},
		{"0.0.0.0:3479", "", "", false},
		{"0.0.0.0:3479", "0.0.0.0", "", false},
		{"", "192.0.2.7", "", false},
	} {
		var a netip.AddrPort
		if tc.listen != "" {
			a = netip.MustParseAddrPort(tc.listen)
		}
		alt, _ := netip.ParseAddr(tc.alt)
		if got, ok := iceHostPort(a, alt); got != tc.want || ok != tc.ok {
			t.Errorf("iceHostPort(%s, %q) = %q, %v; want %q, %v", tc.listen, tc.alt, got, ok, tc.want, tc.ok)
		}
	}
}
