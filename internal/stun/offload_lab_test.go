//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package stun_test

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/traverse-rtc/traverse/client/nat"
	"github.com/traverse-rtc/traverse/internal/kfast/kfasttest"
	"github.com/traverse-rtc/traverse/internal/metricstest"
	"github.com/traverse-rtc/traverse/internal/stun"
	"github.com/traverse-rtc/traverse/internal/stun/stuntest"
)

// otherIP is the gateway's second address on the client's side (RFC 5780).
var otherIP = netip.MustParseAddr("10.1.0.3")

// TestOffloadLab runs the RFC 5780 server with --offload ebpf in the lab's
// gateway namespace and asks it from the client namespace over veth: coturn's turnutils_stunclient and client/nat get
// correct answers, the plain Binding requests answered by the kernel (the
// user-space server never sees them) and the change requests by user
// space. Twice: the client's checksums partial and completed by the
// gateway's interface on the way back, and the client computing them in
// full; either way the client's stack verifies every checksum the program
// wrote.
func TestOffloadLab(t *testing.T) {
	if _, err := exec.LookPath("turnutils_stunclient"); err != nil {
		t.Skipf("turnutils_stunclient not installed (Debian package coturn): %v", err)
	}
	for _, tc := range []struct {
		name string
		set  func(*kfasttest.Lab, *testing.T)
	}{
		{"partial checksums completed at the gateway", func(l *kfasttest.Lab, t *testing.T) { l.GatewayChecksums(t) }},
		{"full checksums from the client", func(l *kfasttest.Lab, t *testing.T) { l.FullChecksums(t) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := kfasttest.New(t, true)
			tc.set(l, t)
			offloadLab(t, l)
		})
	}
}

func offloadLab(t *testing.T, l *kfasttest.Lab) {
	var s *stun.Server
	reg := prometheus.NewRegistry()
	l.In(t, l.Gateway, func() {
		link, err := netlink.LinkByName("out0")
		if err != nil {
			t.Fatal(err)
		}
		addr, _ := netlink.ParseAddr(otherIP.String() + "/24")
		if err := netlink.AddrAdd(link, addr); err != nil {
			t.Fatal(err)
		}
		s = stuntest.Start(t, stun.Config{Listen: netip.AddrPortFrom(kfasttest.OutsideIP, 0), OtherAddress: otherIP,
			Offload: stun.OffloadEBPF, Rate: -1}, reg)
	})
	if s.Path() != stun.OffloadEBPF {
		t.Fatalf("path %q", s.Path())
	}
	if v := metricstest.Value(t, reg, "traverse_stun_path_info", "path", "ebpf"); v != 1 {
		t.Errorf("traverse_stun_path_info{path=ebpf} = %v", v)
	}
	userUDP := func() float64 { return metricstest.Value(t, reg, "traverse_stun_requests_total", "transport", "udp") }

	// client/nat: test I (Binding with FINGERPRINT) in the kernel, tests
	// II and III (CHANGE-REQUEST) in user space.
	k0, u0 := s.KernelAnswers(), userUDP()
	var rep nat.Report
	l.In(t, l.Client, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var err error
		rep, err = nat.Discover(ctx, nat.Config{Server: s.Addr().String(), Local: kfasttest.ClientIP.String()})
		if err != nil {
			t.Fatal(err)
		}
	})
	if rep.PublicAddr.Addr() != kfasttest.ClientIP || rep.NAT || rep.OtherAddress != s.OtherAddr() {
		t.Errorf("client/nat report: public %v nat %v other %v", rep.PublicAddr, rep.NAT, rep.OtherAddress)
	}
	if rep.Mapping != nat.EndpointIndependent || rep.Filtering != nat.EndpointIndependent {
		t.Errorf("client/nat: mapping %v filtering %v, want endpoint-independent (no NAT)", rep.Mapping, rep.Filtering)
	}
	k1, u1 := s.KernelAnswers(), userUDP()
	if k1 == k0 {
		t.Errorf("client/nat: no answer from the kernel")
	}
	if u1 == u0 {
		t.Errorf("client/nat: no change request reached user space")
	}

	// turnutils_stunclient: its plain request and its RFC 5780 change
	// request.
	var out []byte
	l.In(t, l.Client, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var err error
		out, err = exec.CommandContext(ctx, "turnutils_stunclient", "-L", kfasttest.ClientIP.String(),
			"-p", strconv.Itoa(int(s.Addr().Port())), kfasttest.OutsideIP.String()).CombinedOutput()
		if err != nil {
			t.Fatalf("turnutils_stunclient: %v\n%s", err, out)
		}
	})
	if !strings.Contains(string(out), "UDP reflexive addr: "+kfasttest.ClientIP.String()+":") || strings.Contains(string(out), "rror") {
		t.Errorf("turnutils_stunclient (plain):\n%s", out)
	}
	k2, u2 := s.KernelAnswers(), userUDP()
	if k2 == k1 {
		t.Errorf("turnutils_stunclient: no answer from the kernel:\n%s", out)
	}
	l.In(t, l.Client, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var err error
		out, err = exec.CommandContext(ctx, "turnutils_stunclient", "-f", "-L", kfasttest.ClientIP.String(),
			"-p", strconv.Itoa(int(s.Addr().Port())), kfasttest.OutsideIP.String()).CombinedOutput()
		if err != nil {
			t.Fatalf("turnutils_stunclient -f: %v\n%s", err, out)
		}
	})
	for _, want := range []string{"RFC 5780 response 2", "Response origin: : " + s.OtherAddr().String(),
		"UDP reflexive addr: " + kfasttest.ClientIP.String() + ":"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("turnutils_stunclient -f lacks %q:\n%s", want, out)
		}
	}
	if userUDP() == u2 {
		t.Errorf("turnutils_stunclient -f: the change request did not reach user space")
	}
	t.Logf("kernel answers %d, user-space UDP requests %v", s.KernelAnswers(), userUDP())
}

// TestOffloadConfig: the kernel path refuses what it cannot answer the
// same way (SOFTWARE, IPv6) and unknown values; off is the default and is
// exported as the path in use.
func TestOffloadConfig(t *testing.T) {
	for _, cfg := range []stun.Config{
		{Listen: netip.MustParseAddrPort("127.0.0.1:0"), Offload: "xdp"},
		{Listen: netip.MustParseAddrPort("127.0.0.1:0"), Offload: stun.OffloadEBPF, Software: "traverse"},
		{Listen: netip.MustParseAddrPort("[::1]:0"), Offload: stun.OffloadEBPF},
	} {
		if s, err := stun.New(cfg); !errors.Is(err, stun.ErrConfig) {
			if s != nil {
				s.Close()
			}
			t.Errorf("%+v: %v, want ErrConfig", cfg, err)
		}
	}
	reg := prometheus.NewRegistry()
	s := stuntest.Start(t, stun.Config{}, reg)
	if s.Path() != stun.OffloadOff || s.KernelAnswers() != 0 {
		t.Errorf("default path %q", s.Path())
	}
	if v := metricstest.Value(t, reg, "traverse_stun_path_info", "path", "off"); v != 1 {
		t.Errorf("traverse_stun_path_info{path=off} = %v", v)
	}
}
