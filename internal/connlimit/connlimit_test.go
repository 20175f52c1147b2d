package connlimit

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/traverse-rtc/traverse/internal/metricstest"
)

func TestSplit(t *testing.T) {
	for _, tc := range []struct {
		name   string
		limit  int
		shares []Share
		want   map[string]int
	}{
		{"none", 20000, nil, map[string]int{}},
		{"one", 20000, []Share{{"signal", 1}}, map[string]int{"signal": 15000}},
		{"weights", 20000, []Share{{"signal", 4}, {"turn", 4}, {"stun", 1}, {"admin", 1}},
			map[string]int{"signal": 6000, "turn": 6000, "stun": 1500, "admin": 1500}},
		{"small limit keeps 256", 1024, []Share{{"a", 1}, {"b", 1}}, map[string]int{"a": 384, "b": 384}},
		{"tiny limit still gives 1", 100, []Share{{"a", 1}}, map[string]int{"a": 1}},
		{"zero weight absent", 20000, []Share{{"a", 1}, {"b", 0}}, map[string]int{"a": 15000}},
		{"infinity", int(^uint(0) >> 1), []Share{{"a", 1}}, map[string]int{"a": 805306368}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Split(tc.limit, tc.shares...)
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			sum := 0
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s: got %d, want %d", k, got[k], v)
				}
				sum += got[k]
			}
			if tc.limit > 256 && tc.limit < maxLimit && sum >= tc.limit {
				t.Errorf("budgets sum to %d, not below the limit %d", sum, tc.limit)
			}
		})
	}
}

func TestCap(t *testing.T) {
	for _, tc := range []struct{ configured, budget, want int }{
		{0, 0, 0}, {100, 0, 100}, {0, 50, 50}, {100, 50, 50}, {50, 100, 50},
	} {
		if got := Cap(tc.configured, tc.budget); got != tc.want {
			t.Errorf("Cap(%d, %d) = %d, want %d", tc.configured, tc.budget, got, tc.want)
		}
	}
}

func TestRaiseFDLimit(t *testing.T) {
	n, err := RaiseFDLimit()
	if err != nil {
		t.Fatal(err)
	}
	if n < 64 {
		t.Fatalf("limit %d", n)
	}
}

// serve accepts on l until it closes, keeping each connection open and
// echoing nothing; it returns the accepted connections' channel.
func serve(t *testing.T, l *Listener) chan net.Conn {
	t.Helper()
	ch := make(chan net.Conn, 1024)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(ch)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			ch <- c
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		wg.Wait()
		for c := range ch {
			_ = c.Close()
		}
	})
	return ch
}

func dialFrom(t *testing.T, src string, dst net.Addr) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// refused reports whether the server closed c (EOF or reset) within 2 s.
func refused(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err := c.Read(make([]byte, 1))
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err)
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

func TestListenerCaps(t *testing.T) {
	defer goleak.VerifyNone(t)
	type dialStep struct {
		src     string
		refused bool
	}
	for _, tc := range []struct {
		name  string
		lim   Limits
		dials []dialStep
		// per reason, the refusals counted
		total, perAddr float64
	}{
		{"per address", Limits{MaxConnsPerAddr: 2}, []dialStep{
			{"127.0.0.2", false}, {"127.0.0.2", false}, {"127.0.0.2", true}, {"127.0.0.3", false}, {"127.0.0.2", true},
		}, 0, 2},
		{"total", Limits{MaxConns: 3}, []dialStep{
			{"127.0.0.2", false}, {"127.0.0.3", false}, {"127.0.0.4", false}, {"127.0.0.5", true},
		}, 1, 0},
		{"both", Limits{MaxConns: 3, MaxConnsPerAddr: 2}, []dialStep{
			{"127.0.0.2", false}, {"127.0.0.2", false}, {"127.0.0.2", true}, {"127.0.0.3", false}, {"127.0.0.4", true},
		}, 1, 1},
		{"exempt proxy", Limits{MaxConns: 5, MaxConnsPerAddr: 1, Exempt: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}}, []dialStep{
			{"127.0.0.2", false}, {"127.0.0.2", false}, {"127.0.0.2", false}, {"127.0.0.3", false}, {"127.0.0.3", true},
			{"127.0.0.2", false}, {"127.0.0.2", true},
		}, 1, 1},
		{"no caps", Limits{}, []dialStep{
			{"127.0.0.2", false}, {"127.0.0.2", false}, {"127.0.0.2", false},
		}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, reg := newTestListener(t, tc.lim)
			accepted := serve(t, l)
			want := 0
			for i, d := range tc.dials {
				c := dialFrom(t, d.src, l.Addr())
				if d.refused {
					if !refused(c) {
						t.Fatalf("dial %d from %s: not refused", i, d.src)
					}
					continue
				}
				want++
				select {
				case <-accepted:
				case <-time.After(2 * time.Second):
					t.Fatalf("dial %d from %s: not accepted", i, d.src)
				}
			}
			if l.Open() != want {
				t.Errorf("open %d, want %d", l.Open(), want)
			}
			if got := metricstest.Value(t, reg, "traverse_listener_connections_open", "listener", "test"); got != float64(want) {
				t.Errorf("open gauge %v, want %d", got, want)
			}
			if got := metricstest.Value(t, reg, "traverse_listener_connections_accepted_total", "listener", "test"); got != float64(want) {
				t.Errorf("accepted %v, want %d", got, want)
			}
			if got := metricstest.Value(t, reg, "traverse_listener_connections_refused_total", "reason", ReasonTotal); got != tc.total {
				t.Errorf("refused total %v, want %v", got, tc.total)
			}
			if got := metricstest.Value(t, reg, "traverse_listener_connections_refused_total", "reason", ReasonPerAddr); got != tc.perAddr {
				t.Errorf("refused per_addr %v, want %v", got, tc.perAddr)
			}
		})
	}
}

// TestReleaseOnClose: a closed connection frees its place (once, however
// often it is closed), so the same source may connect again.
func TestReleaseOnClose(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := New(inner, Limits{MaxConns: 1, MaxConnsPerAddr: 1}, nil)
	accepted := serve(t, l)
	dialFrom(t, "127.0.0.2", l.Addr())
	c := <-accepted
	if !refused(dialFrom(t, "127.0.0.3", l.Addr())) {
		t.Fatal("second connection over the total cap not refused")
	}
	_ = c.Close()
	_ = c.Close()
	if l.Open() != 0 || l.OpenFrom(netip.MustParseAddr("127.0.0.2")) != 0 {
		t.Fatalf("open %d after close", l.Open())
	}
	dialFrom(t, "127.0.0.3", l.Addr())
	select {
	case <-accepted:
	case <-time.After(2 * time.Second):
		t.Fatal("not accepted after the first closed")
	}
	if l.Open() != 1 {
		t.Fatalf("open %d, want 1", l.Open())
	}
}

func TestReadTimeoutCounted(t *testing.T) {
	l, reg := newTestListener(t, Limits{})
	accepted := serve(t, l)
	dialFrom(t, "127.0.0.2", l.Addr())
	c := <-accepted
	for range 2 {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read: %v", err)
		}
	}
	if got := metricstest.Value(t, reg, "traverse_listener_read_timeouts_total"); got != 1 {
		t.Fatalf("timeouts %v, want 1 (once per connection)", got)
	}
	if _, ok := c.(*Conn).NetConn().(*net.TCPConn); !ok {
		t.Fatal("NetConn is not the TCP connection")
	}
}

// TestFlood: thousands of connections from one source hold at most the
// per-address cap; another source still connects meanwhile.
func TestFlood(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const perAddr, flood = 50, 2000
	l := New(inner, Limits{MaxConns: 200, MaxConnsPerAddr: perAddr}, nil)
	accepted := serve(t, l)
	deadline := time.Now().Add(30 * time.Second)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	for i := 0; i < flood && time.Now().Before(deadline); i++ {
		c, err := d.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatalf("flood dial %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	if len(conns) != flood {
		t.Fatalf("only %d flood connections in time", len(conns))
	}
	if n := l.OpenFrom(netip.MustParseAddr("127.0.0.2")); n > perAddr {
		t.Fatalf("%d open from the flooding source, cap %d", n, perAddr)
	}
	dialFrom(t, "127.0.0.3", l.Addr())
	for {
		select {
		case c := <-accepted:
			if c.RemoteAddr().(*net.TCPAddr).IP.Equal(net.ParseIP("127.0.0.3")) {
				return
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the other source was not accepted during the flood")
		}
	}
}

// newTestListener is a Listener with lim on 127.0.0.1, its metrics in reg.
func newTestListener(t *testing.T, lim Limits) (*Listener, *prometheus.Registry) {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, "test")
	if err != nil {
		t.Fatal(err)
	}
	return New(inner, lim, m), reg
}
