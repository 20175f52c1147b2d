package testkit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeTB records a Fatalf instead of ending the test, the way testing.T
// would (Fatalf ends the goroutine: runtime.Goexit).
type fakeTB struct {
	testing.TB
	failed string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func runFake(f func(tb testing.TB)) *fakeTB {
	fake := &fakeTB{}
	done := make(chan struct{})
	go func() { defer close(done); f(fake) }()
	<-done
	return fake
}

func TestWaitFor(t *testing.T) {
	var n atomic.Int32
	start := time.Now()
	WaitFor(t, 5*time.Second, "the third check", func() bool { return n.Add(1) >= 3 })
	if n.Load() != 3 {
		t.Errorf("checked %d times, want 3", n.Load())
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v for three polls", d)
	}

	fake := runFake(func(tb testing.TB) { WaitFor(tb, 30*time.Millisecond, "never", func() bool { return false }) })
	if !strings.Contains(fake.failed, "waiting for never") || !strings.Contains(fake.failed, "30ms") {
		t.Errorf("failure %q, want the condition's name and the timeout", fake.failed)
	}
}

func TestEventually(t *testing.T) {
	if !Eventually(time.Second, func() bool { return true }) {
		t.Error("a condition that holds at once was not seen")
	}
	start := time.Now()
	if Eventually(20*time.Millisecond, func() bool { return false }) {
		t.Error("a condition that never holds was reported held")
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Errorf("gave up after %v, before the 20ms timeout", d)
	}
}

func TestListenUDP(t *testing.T) {
	var addr netip.AddrPort
	t.Run("open", func(t *testing.T) {
		c := ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
		addr = c.LocalAddr().(interface{ AddrPort() netip.AddrPort }).AddrPort()
		if !addr.Addr().Is4() || addr.Port() == 0 {
			t.Fatalf("bound to %v", addr)
		}
	})
	// Closed with its test: the port can be bound again.
	c := ListenUDP(t, addr)
	c.Close()
}

func TestEcho(t *testing.T) {
	srv := ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	var senders atomic.Int32
	Echo(t, srv, func(netip.AddrPort) { senders.Add(1) })
	cl := ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	to := srv.LocalAddr().(interface{ AddrPort() netip.AddrPort }).AddrPort()
	if _, err := cl.WriteToUDPAddrPort([]byte("ping"), to); err != nil {
		t.Fatal(err)
	}
	_ = cl.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	n, from, err := cl.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "ping" || from != to {
		t.Fatalf("got %q from %v (%v), want ping from %v", buf[:n], from, err, to)
	}
	if senders.Load() != 1 {
		t.Errorf("seen called %d times, want 1", senders.Load())
	}
}

// cleanupTB records Cleanup functions and Errorf messages.
type cleanupTB struct {
	fakeTB
	cleanups []func()
	errs     []string
}

func (c *cleanupTB) Cleanup(f func()) { c.cleanups = append(c.cleanups, f) }
func (c *cleanupTB) Errorf(format string, args ...any) {
	c.errs = append(c.errs, fmt.Sprintf(format, args...))
}

func TestRun(t *testing.T) {
	for _, tc := range []struct {
		name    string
		result  error
		wantErr string
	}{
		{"clean stop", nil, ""},
		{"error on stop", errors.New("stop failed"), "Run: stop failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := &cleanupTB{}
			running := make(chan struct{})
			var returned atomic.Bool
			Run(fake, func(ctx context.Context) error {
				close(running)
				<-ctx.Done()
				returned.Store(true)
				return tc.result
			})
			<-running
			if len(fake.cleanups) != 1 {
				t.Fatalf("%d cleanups registered, want 1", len(fake.cleanups))
			}
			if returned.Load() {
				t.Fatal("run's context ended before the test did")
			}
			fake.cleanups[0]()
			got := strings.Join(fake.errs, "; ")
			if got != tc.wantErr {
				t.Errorf("errors %q, want %q", got, tc.wantErr)
			}
		})
	}
}

func TestSilent(t *testing.T) {
	c := ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	if f := runFake(func(tb testing.TB) { Silent(tb, c, "quiet socket") }); f.failed != "" {
		t.Errorf("Silent on a quiet socket failed: %s", f.failed)
	}
	cl := ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	if _, err := cl.WriteToUDPAddrPort([]byte("x"), c.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		t.Fatal(err)
	}
	f := runFake(func(tb testing.TB) { Silent(tb, c, "the socket") })
	if !strings.Contains(f.failed, "the socket received 1 bytes") {
		t.Errorf("Silent with a datagram waiting: %q, want a failure naming it", f.failed)
	}
}
