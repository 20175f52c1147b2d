package nat_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/traverse-rtc/traverse/client/nat"
	"github.com/traverse-rtc/traverse/internal/stun"
	"github.com/traverse-rtc/traverse/internal/stun/stuntest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// On loopback there is no NAT: everything is endpoint-independent and
// hairpinning works.
func TestDiscoverLoopbackNoNAT(t *testing.T) {
	s := stuntest.RFC5780(t)
	for _, local := range []string{"", "127.0.0.1"} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		rep, err := nat.Discover(ctx, nat.Config{Server: s.Addr().String(), Local: local, RTO: 100 * time.Millisecond})
		cancel()
		if err != nil {
			t.Fatalf("local %q: %v", local, err)
		}
		if rep.NAT || rep.Mapping != nat.EndpointIndependent || rep.Filtering != nat.EndpointIndependent || !rep.Hairpinning {
			t.Errorf("local %q: got %+v, want no NAT, endpoint-independent mapping and filtering, hairpinning", local, rep)
		}
		if rep.OtherAddress != s.OtherAddr() {
			t.Errorf("other address %s, want %s", rep.OtherAddress, s.OtherAddr())
		}
		if rep.PublicAddr.Port() != rep.Local.Port() {
			t.Errorf("public %s vs local %s", rep.PublicAddr, rep.Local)
		}
		var back map[string]any
		if err := json.Unmarshal(rep.JSON(), &back); err != nil || back["mapping"] != "endpoint-independent" {
			t.Errorf("json: %v %v", back, err)
		}
	}
}

func TestDiscoverNoRFC5780(t *testing.T) {
	s := stuntest.Start(t, stun.Config{}, nil)
	_, err := nat.Discover(context.Background(), nat.Config{Server: s.Addr().String(), RTO: 50 * time.Millisecond})
	if !errors.Is(err, nat.ErrNoRFC5780) {
		t.Fatalf("got %v, want ErrNoRFC5780", err)
	}
}

// TestDiscoverSilentServer: against a bound socket that never answers,
// Discover gives up after its bounded retransmissions (ErrUnreachable), or
// as soon as its context ends.
func TestDiscoverSilentServer(t *testing.T) {
	for _, tc := range []struct {
		name     string
		timeout  time.Duration // the context's; 0: none
		rto      time.Duration
		attempts int
		want     error
		within   time.Duration
	}{
		{"unreachable", 0, 20 * time.Millisecond, 3, nat.ErrUnreachable, 2 * time.Second},
		{"context ends", 100 * time.Millisecond, time.Second, 5, context.DeadlineExceeded, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			silent := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			start := time.Now()
			_, err := nat.Discover(ctx, nat.Config{Server: silent.LocalAddr().String(), RTO: tc.rto, Attempts: tc.attempts})
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if d := time.Since(start); d > tc.within {
				t.Errorf("took %s, want at most %s: retransmissions are not bounded", d, tc.within)
			}
		})
	}
}

func TestBehaviorText(t *testing.T) {
	for b := nat.Unknown; b <= nat.AddressAndPortDependent; b++ {
		txt, _ := b.MarshalText()
		var back nat.Behavior
		if err := back.UnmarshalText(txt); err != nil || back != b {
			t.Errorf("%v: round trip gave %v, %v", b, back, err)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []nat.Config{{}, {Server: "nope"}, {Server: "127.0.0.1:1", Local: "x"}, {Server: "127.0.0.1:1", Local: "::1"}} {
		if _, err := nat.Discover(context.Background(), c); !errors.Is(err, nat.ErrConfig) {
			t.Errorf("%+v: got %v, want ErrConfig", c, err)
		}
	}
}

func TestDiscoverByName(t *testing.T) {
	s := stuntest.RFC5780(t)
	rep, err := nat.Discover(context.Background(), nat.Config{Server: "localhost:" + strconv.Itoa(int(s.Addr().Port())), RTO: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Server != s.Addr() {
		t.Errorf("asked %s, want %s", rep.Server, s.Addr())
	}
}
