package nat_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/traverse-rtc/traverse/client/nat"
	"github.com/traverse-rtc/traverse/internal/stun"
	"github.com/traverse-rtc/traverse/internal/stun/stuntest"
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

func TestDiscoverUnreachable(t *testing.T) {
	// A bound socket that never answers.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	start := time.Now()
	_, err = nat.Discover(context.Background(), nat.Config{Server: pc.LocalAddr().String(), RTO: 20 * time.Millisecond, Attempts: 3})
	if !errors.Is(err, nat.ErrUnreachable) {
		t.Fatalf("got %v, want ErrUnreachable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %s; retransmissions are not bounded", d)
	}
}

func TestDiscoverContext(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = nat.Discover(ctx, nat.Config{Server: pc.LocalAddr().String(), RTO: time.Second, Attempts: 5})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("cancel took %s", d)
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
