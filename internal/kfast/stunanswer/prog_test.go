//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package stunanswer_test

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"net/netip"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/kfast"
	"github.com/traverse-rtc/traverse/internal/kfast/kfasttest"
	"github.com/traverse-rtc/traverse/internal/kfast/stunanswer"
	"github.com/traverse-rtc/traverse/internal/stun"
	"github.com/traverse-rtc/traverse/internal/stun/stuntest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// request builds a STUN message: type, transaction ID byte, attributes
// (type, value), and a FINGERPRINT when fp.
func request(typ uint16, id byte, fp bool, attrs ...[]byte) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b, typ)
	binary.BigEndian.PutUint32(b[4:], 0x2112A442)
	for i := 8; i < 20; i++ {
		b[i] = id + byte(i)
	}
	for _, a := range attrs {
		b = append(b, a...)
	}
	if fp {
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)-20+8))
		crc := crc32.ChecksumIEEE(b) ^ 0x5354554e
		b = binary.BigEndian.AppendUint32(append(b, 0x80, 0x28, 0, 4), crc)
	}
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)-20))
	return b
}

// attr is a STUN attribute, padded.
func attr(t uint16, v ...byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, t)
	b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// userSpace is the user-space server's answer to req sent from c.
func userSpace(t *testing.T, c interface {
	WriteToUDPAddrPort([]byte, netip.AddrPort) (int, error)
	ReadFromUDPAddrPort([]byte) (int, netip.AddrPort, error)
	SetReadDeadline(time.Time) error
}, to netip.AddrPort, req []byte) []byte {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(req, to); err != nil {
		t.Fatal(err)
	}
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	n, _, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("user-space server: %v", err)
	}
	return buf[:n]
}

// TestProgram table-tests the program with BPF_PROG_TEST_RUN: every
// request it answers must come out as the user-space server's answer to
// the same request from the same address, byte for byte, in a frame with
// the addresses, ports and Ethernet addresses swapped, TTL 64 and valid
// checksums; everything it cannot answer passes untouched and uncounted.
func TestProgram(t *testing.T) {
	for _, rfc5780 := range []bool{false, true} {
		name := "plain"
		cfg := stun.Config{Rate: -1}
		if rfc5780 {
			name, cfg.Listen, cfg.OtherAddress = "rfc5780", netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddr("127.0.0.2")
		}
		t.Run(name, func(t *testing.T) {
			s := stuntest.Start(t, cfg, nil)
			ep := stunanswer.Endpoint{Addr: s.Addr()}
			if rfc5780 {
				ep.Other = s.OtherAddr()
			}
			a, err := stunanswer.New(stunanswer.Config{NoAttach: true, Endpoints: []stunanswer.Endpoint{ep}})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			c := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
			client := netip.MustParseAddrPort(c.LocalAddr().String())
			answered := func(tb testing.TB) uint64 {
				n, err := a.Answered()
				if err != nil {
					tb.Fatal(err)
				}
				return n.Packets
			}
			var want uint64
			for _, tc := range []struct {
				name   string
				req    []byte
				noCsum bool
			}{
				{"header only", request(0x0001, 1, false), false},
				{"with FINGERPRINT", request(0x0001, 2, true), false},
				{"zero UDP checksum", request(0x0001, 3, false), true},
				{"FINGERPRINT, zero UDP checksum", request(0x0001, 4, true), true},
			} {
				t.Run("answers: "+tc.name, func(t *testing.T) {
					in := kfasttest.Packet{Src: client, Dst: s.Addr(), Payload: tc.req, NoCsum: tc.noCsum}.Bytes()
					wantAns := userSpace(t, c, s.Addr(), tc.req)
					kfasttest.CheckRewrite(t, a.Program(), kfasttest.Rewrite{In: in, Ret: kfasttest.ActRedirect, Src: s.Addr(), Dst: client,
						Payload: wantAns, ZeroCsum: tc.noCsum, TTL: 64, Eth: append(in[6:12:12], in[0:6]...)})
					want++
				})
			}
			if got := answered(t); got != want {
				t.Errorf("answers counted %d, want %d", got, want)
			}
			hit := kfasttest.Packet{Src: client, Dst: s.Addr(), Payload: request(0x0001, 9, false)}
			kfasttest.PassesTo(t, a.Program(), hit, answered)
			for _, tc := range []struct {
				name string
				p    []byte
			}{
				{"CHANGE-REQUEST (RFC 5780)", request(0x0001, 1, false, attr(0x0003, 0, 0, 0, 6))},
				{"CHANGE-REQUEST without flags", request(0x0001, 1, false, attr(0x0003, 0, 0, 0, 0))},
				{"USERNAME and MESSAGE-INTEGRITY", request(0x0001, 1, false, attr(0x0006, 'a', 'b', 'c', 'd'), attr(0x0008, make([]byte, 20)...))},
				{"USERNAME", request(0x0001, 1, true, attr(0x0006, 'a'))},
				{"RESPONSE-PORT", request(0x0001, 1, false, attr(0x0027, 0x30, 0x39))},
				{"PADDING", request(0x0001, 1, false, attr(0x0026, make([]byte, 8)...))},
				{"SOFTWARE", request(0x0001, 1, false, attr(0x8022, 'x'))},
				{"bad FINGERPRINT", append(request(0x0001, 1, true)[:24], 0, 0, 0, 0)},
				{"Binding indication", request(0x0011, 1, false)},
				{"Binding success response", request(0x0101, 1, false)},
				{"Allocate request", request(0x0003, 1, false)},
				{"no magic cookie (RFC 3489)", func() []byte { b := request(0x0001, 1, false); b[4] = 0; return b }()},
				{"length field lies", func() []byte { b := request(0x0001, 1, false); b[3] = 8; return b }()},
				{"header + 8 bytes not FINGERPRINT", append(request(0x0001, 1, false)[:20:20], 0x80, 0x28, 0, 8, 1, 2, 3, 4)},
				{"19 bytes", request(0x0001, 1, false)[:19]},
				{"RTP", append([]byte{0x80, 96}, make([]byte, 170)...)},
			} {
				t.Run("pass: "+tc.name, func(t *testing.T) {
					in := kfasttest.Packet{Src: client, Dst: s.Addr(), Payload: tc.p}.Bytes()
					ret, out := kfasttest.Run(t, a.Program(), in)
					if ret != kfasttest.ActUnspec || !bytes.Equal(out, in) {
						t.Errorf("returned %d, changed %v; want handed on untouched", int32(ret), !bytes.Equal(out, in))
					}
				})
			}
			if got := answered(t); got != want {
				t.Errorf("answers counted %d after the passes, want %d", got, want)
			}
		})
	}
}

// TestWildcard: an endpoint on 0.0.0.0 answers on every address of its
// port, and not on another port.
func TestWildcard(t *testing.T) {
	a, err := stunanswer.New(stunanswer.Config{NoAttach: true, Endpoints: []stunanswer.Endpoint{{Addr: netip.MustParseAddrPort("0.0.0.0:3478")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	src := netip.MustParseAddrPort("198.51.100.7:4000")
	for _, dst := range []string{"192.0.2.1:3478", "203.0.113.9:3478"} {
		in := kfasttest.Packet{Src: src, Dst: netip.MustParseAddrPort(dst), Payload: request(0x0001, 1, true)}.Bytes()
		if ret, _ := kfasttest.Run(t, a.Program(), in); ret != kfasttest.ActRedirect {
			t.Errorf("%s: returned %d, want an answer", dst, int32(ret))
		}
	}
	in := kfasttest.Packet{Src: src, Dst: netip.MustParseAddrPort("192.0.2.1:3479"), Payload: request(0x0001, 1, true)}.Bytes()
	if ret, _ := kfasttest.Run(t, a.Program(), in); ret != kfasttest.ActUnspec {
		t.Errorf("other port: returned %d, want passed", int32(ret))
	}
	if _, err := stunanswer.New(stunanswer.Config{NoAttach: true, Endpoints: []stunanswer.Endpoint{{Addr: netip.MustParseAddrPort("[::1]:3478")}}}); err == nil {
		t.Error("IPv6 endpoint accepted")
	}
	_ = kfast.ErrNotIPv4
}

// FuzzProgram runs arbitrary frames through the program with one RFC 5780
// endpoint installed. A frame it hands on must come out byte for byte
// unchanged; a frame it answers must have been a Binding request to the
// endpoint (20 bytes, or 28 with FINGERPRINT), and its answer must carry
// the request's transaction ID, a valid FINGERPRINT when asked for, and
// the swapped addresses with a valid IP header checksum.
func FuzzProgram(f *testing.F) {
	srv := netip.MustParseAddrPort("192.0.2.1:3478")
	a, err := stunanswer.New(stunanswer.Config{NoAttach: true, Endpoints: []stunanswer.Endpoint{{Addr: srv, Other: netip.MustParseAddrPort("192.0.2.2:3479")}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { a.Close() })
	src := netip.MustParseAddrPort("198.51.100.7:4000")
	for _, p := range [][]byte{request(0x0001, 1, false), request(0x0001, 2, true), request(0x0001, 3, false, attr(0x0003, 0, 0, 0, 6)),
		append(request(0x0001, 1, true)[:24], 0, 0, 0, 0)} {
		f.Add(kfasttest.Packet{Src: src, Dst: srv, Payload: p}.Bytes())
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, ok := kfasttest.Redirected(t, a.Program(), in)
		if !ok {
			return
		}
		if len(in) < 62 || binary.BigEndian.Uint16(in[42:]) != 0x0001 {
			t.Fatalf("answered a frame that is no Binding request: %x", in)
		}
		from, to := kfasttest.Tuple(in)
		if to != srv {
			t.Fatalf("answered a request to %v", to)
		}
		ulen := int(binary.BigEndian.Uint16(out[38:]))
		if ulen < 8+20 || 34+ulen > len(out) {
			t.Fatalf("answer UDP length %d", ulen)
		}
		ans := out[42 : 34+ulen]
		if binary.BigEndian.Uint16(ans) != 0x0101 || !bytes.Equal(ans[4:20], in[46:62]) {
			t.Errorf("answer header %x for request %x", ans[:20], in[42:62])
		}
		if s, d := kfasttest.Tuple(out); s != srv || d != from {
			t.Errorf("answer %v -> %v", s, d)
		}
		if kfasttest.Fold(kfasttest.Sum(0, out[14:34])) != 0xffff {
			t.Errorf("IP header checksum invalid")
		}
		if n := len(ans); binary.BigEndian.Uint16(ans[n-8:]) == 0x8028 &&
			crc32.ChecksumIEEE(ans[:n-8])^0x5354554e != binary.BigEndian.Uint32(ans[n-4:]) {
			t.Errorf("FINGERPRINT invalid")
		}
	})
}

// TestRate mounts a spoofed flood at one victim: the kernel answers the
// victim's address at most Burst times at once (then at Rate); the rest
// passes untouched to user space, whose own limiter drops and counts it.
// Another source is still answered.
func TestRate(t *testing.T) {
	srv := netip.MustParseAddrPort("192.0.2.1:3478")
	a, err := stunanswer.New(stunanswer.Config{NoAttach: true, Rate: 1, Burst: 3, Endpoints: []stunanswer.Endpoint{{Addr: srv}}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	victim := netip.MustParseAddrPort("198.51.100.7:4000")
	answered := 0
	for i := range 50 {
		in := kfasttest.Packet{Src: netip.AddrPortFrom(victim.Addr(), uint16(4000+i)), Dst: srv, Payload: request(0x0001, byte(i), false)}.Bytes()
		ret, out := kfasttest.Run(t, a.Program(), in)
		switch ret {
		case kfasttest.ActRedirect:
			answered++
		case kfasttest.ActUnspec:
			if !bytes.Equal(out, in) {
				t.Fatal("passed request changed")
			}
		default:
			t.Fatalf("returned %d", int32(ret))
		}
	}
	if answered != 3 {
		t.Errorf("flood at one address: %d answered in the kernel, want the burst, 3", answered)
	}
	in := kfasttest.Packet{Src: netip.MustParseAddrPort("198.51.100.8:4000"), Dst: srv, Payload: request(0x0001, 1, false)}.Bytes()
	if ret, _ := kfasttest.Run(t, a.Program(), in); ret != kfasttest.ActRedirect {
		t.Errorf("another source: returned %d, want an answer", int32(ret))
	}
	if c, err := a.Answered(); err != nil || c.Packets != 4 {
		t.Errorf("answers counted %d (%v), want 4", c.Packets, err)
	}
}
