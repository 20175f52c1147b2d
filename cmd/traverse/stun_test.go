package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	pstun "github.com/pion/stun/v3"

	"github.com/traverse-rtc/traverse/client/nat"
	"github.com/traverse-rtc/traverse/internal/stun"
	"github.com/traverse-rtc/traverse/internal/stun/stuntest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

func TestNatcheckCommand(t *testing.T) {
	s := stuntest.RFC5780(t)
	ctx := context.Background()
	var out bytes.Buffer
	// Flags after the server work too.
	if err := natcheck(ctx, &out, []string{s.Addr().String(), "--json", "--rto", "50ms"}); err != nil {
		t.Fatalf("natcheck: %v\n%s", err, out.String())
	}
	var rep nat.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("json: %v\n%s", err, out.String())
	}
	if rep.NAT || rep.Mapping != nat.EndpointIndependent || rep.Filtering != nat.EndpointIndependent || !rep.Hairpinning {
		t.Errorf("loopback report %+v", rep)
	}
	out.Reset()
	if err := natcheck(ctx, &out, []string{"--local", "127.0.0.1", s.Addr().String()}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"mapping:          endpoint-independent", "filtering:        endpoint-independent", "NAT:              no"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("human output lacks %q:\n%s", want, out.String())
		}
	}

	// No RFC 5780: a clear error.
	plain := stuntest.Start(t, stun.Config{}, nil)
	if err := natcheck(ctx, &out, []string{"--rto", "50ms", plain.Addr().String()}); !errors.Is(err, nat.ErrNoRFC5780) {
		t.Errorf("against a server without RFC 5780: %v", err)
	}
	// Nobody there.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	out.Reset()
	if err := natcheck(ctx, &out, []string{"--json", "--rto", "20ms", "--attempts", "2", pc.LocalAddr().String()}); !errors.Is(err, nat.ErrUnreachable) {
		t.Errorf("against nobody: %v", err)
	}
	if !strings.Contains(out.String(), `"error"`) {
		t.Errorf("--json error output: %s", out.String())
	}
	if err := natcheck(ctx, &out, nil); err == nil {
		t.Error("no server argument accepted")
	}
}

// traverse stun answers, serves /readyz, and stops within 5 s of the signal.
func TestSTUNCommand(t *testing.T) {
	p := testkit.FreePorts(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runSTUN(ctx, []string{"--listen", "127.0.0.1:" + strconv.Itoa(p), "--other-address", "127.0.0.2",
			"--admin", "", "--log-level", "warn"})
	}()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := pstun.MustBuild(pstun.TransactionID, pstun.BindingRequest)
	dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), uint16(p+1))
	buf := make([]byte, 1500)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := c.WriteToUDPAddrPort(req.Raw, dst); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, _, err := c.ReadFromUDPAddrPort(buf); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("traverse stun ended early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer from the RFC 5780 alternate socket %s", dst)
		}
	}
	testkit.Stop(t, "traverse stun", cancel, done)
}
