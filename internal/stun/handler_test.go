package stun

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/pion/stun/v3"
)

// rfc5769Request is RFC 5769 section 2.1, the sample request (ICE
// attributes, short-term credentials, FINGERPRINT).
var rfc5769Request = []byte("\x00\x01\x00\x58" +
	"\x21\x12\xa4\x42" +
	"\xb7\xe7\xa7\x01\xbc\x34\xd6\x86\xfa\x87\xdf\xae" +
	"\x80\x22\x00\x10" +
	"STUN test client" +
	"\x00\x24\x00\x04" +
	"\x6e\x00\x01\xff" +
	"\x80\x29\x00\x08" +
	"\x93\x2f\xf9\xb1\x51\x26\x3b\x36" +
	"\x00\x06\x00\x09" +
	"\x65\x76\x74\x6a\x3a\x68\x36\x76\x59\x20\x20\x20" +
	"\x00\x08\x00\x14" +
	"\x9a\xea\xa7\x0c\xbf\xd8\xcb\x56\x78\x1e\xf2\xb5" +
	"\xb2\xd3\xf2\x49\xc1\xb5\x71\xa2" +
	"\x80\x28\x00\x04" +
	"\xe5\x7a\x3b\xcf")

// rfc5769IPv4Response is RFC 5769 section 2.2: a success response, which a
// server must not answer.
var rfc5769IPv4Response = []byte("\x01\x01\x00\x3c" +
	"\x21\x12\xa4\x42" +
	"\xb7\xe7\xa7\x01\xbc\x34\xd6\x86\xfa\x87\xdf\xae" +
	"\x80\x22\x00\x0b" +
	"\x74\x65\x73\x74\x20\x76\x65\x63\x74\x6f\x72\x20" +
	"\x00\x20\x00\x08" +
	"\x00\x01\xa1\x47\xe1\x12\xa6\x43" +
	"\x00\x08\x00\x14" +
	"\x2b\x91\xf5\x99\xfd\x9e\x90\xc3\x8c\x74\x89\xf9" +
	"\x2a\xf9\xba\x53\xf0\x6b\xe7\xd7" +
	"\x80\x28\x00\x04" +
	"\xc0\x7d\x4c\x96")

var (
	testEP = endpoints{rfc5780: true, addrs: [4]netip.AddrPort{
		netip.MustParseAddrPort("192.0.2.1:3478"),
		netip.MustParseAddrPort("192.0.2.2:3478"),
		netip.MustParseAddrPort("192.0.2.1:3479"),
		netip.MustParseAddrPort("192.0.2.2:3479"),
	}}
	testSrc   = netip.MustParseAddrPort("203.0.113.7:40000")
	noRFC5780 = endpoints{addrs: [4]netip.AddrPort{testEP.addrs[0], testEP.addrs[0], testEP.addrs[0], testEP.addrs[0]}}
)

func build(t testing.TB, setters ...stun.Setter) []byte {
	t.Helper()
	m, err := stun.Build(append([]stun.Setter{stun.TransactionID}, setters...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m.Raw
}

func raw(typ stun.AttrType, v ...byte) stun.RawAttribute {
	return stun.RawAttribute{Type: typ, Value: v}
}

func u32(v uint32) []byte { b := make([]byte, 4); binary.BigEndian.PutUint32(b, v); return b }

// mutate applies f to a copy of b.
func mutate(b []byte, f func([]byte) []byte) []byte { return f(append([]byte(nil), b...)) }

func TestHandle(t *testing.T) {
	plain := build(t, stun.BindingRequest, stun.Fingerprint)
	type want struct {
		drop     reason
		code     int // 0: success
		from     int
		dst      netip.AddrPort
		padding  int // -1: none
		unknown  []stun.AttrType
		noOther  bool
		viaOther int
	}
	ok := want{dst: testSrc, padding: -1}
	flood := build(t, stun.BindingRequest)
	for i := 0; i < maxAttrs+1; i++ {
		flood = appendAttr(flood, 0x8050, nil)
	}
	tests := []struct {
		name string
		in   []byte
		tr   transport
		ep   *endpoints
		want want
	}{
		{"binding", plain, udp, nil, ok},
		{"binding without fingerprint", build(t, stun.BindingRequest), udp, nil, ok},
		{"rfc5769 request", rfc5769Request, udp, nil, ok},
		{"rfc5769 response", rfc5769IPv4Response, udp, nil, want{drop: dropNotRequest}},
		{"indication", build(t, stun.NewType(stun.MethodBinding, stun.ClassIndication)), udp, nil, want{drop: dropNotRequest}},
		{"change ip and port", build(t, stun.BindingRequest, raw(stun.AttrChangeRequest, u32(changeIP|changePort)...)), udp, nil, want{dst: testSrc, from: 3, padding: -1}},
		{"change ip", build(t, stun.BindingRequest, raw(stun.AttrChangeRequest, u32(changeIP)...)), udp, nil, want{dst: testSrc, from: 1, padding: -1}},
		{"change port", build(t, stun.BindingRequest, raw(stun.AttrChangeRequest, u32(changePort)...)), udp, nil, want{dst: testSrc, from: 2, padding: -1}},
		{"change nothing", build(t, stun.BindingRequest, raw(stun.AttrChangeRequest, u32(0)...)), udp, nil, ok},
		{"change request short", build(t, stun.BindingRequest, raw(stun.AttrChangeRequest, 0, 4)), udp, nil, want{code: 400, dst: testSrc, padding: -1}},
		{"change request without rfc 5780", build(t, stun.BindingRequest, raw(stun.AttrChangeRequest, u32(changeIP)...)), udp, &noRFC5780,
			want{code: 420, dst: testSrc, padding: -1, unknown: []stun.AttrType{stun.AttrChangeRequest}, noOther: true}},
		{"change request over tcp", build(t, stun.BindingRequest, raw(stun.AttrChangeRequest, u32(changeIP)...)), tcp, nil, want{code: 400, dst: testSrc, padding: -1}},
		{"response port", build(t, stun.BindingRequest, raw(stun.AttrResponsePort, 0x12, 0x34, 0, 0)), udp, nil, want{dst: netip.AddrPortFrom(testSrc.Addr(), 0x1234), padding: -1}},
		{"response port zero", build(t, stun.BindingRequest, raw(stun.AttrResponsePort, 0, 0, 0, 0)), udp, nil, want{code: 400, dst: testSrc, padding: -1}},
		{"response port over tls", build(t, stun.BindingRequest, raw(stun.AttrResponsePort, 0x12, 0x34, 0, 0)), tlsT, nil, want{code: 400, dst: testSrc, padding: -1}},
		{"padding", build(t, stun.BindingRequest, raw(stun.AttrPadding, make([]byte, 500)...)), udp, nil, want{dst: testSrc, padding: 500}},
		{"padding over tcp ignored", build(t, stun.BindingRequest, raw(stun.AttrPadding, make([]byte, 500)...)), tcp, nil, ok},
		{"padding without rfc 5780 ignored", build(t, stun.BindingRequest, raw(stun.AttrPadding, make([]byte, 500)...)), udp, &noRFC5780, ok},
		{"binding without rfc 5780", plain, udp, &noRFC5780, ok},
		{"unknown required attribute", build(t, stun.BindingRequest, raw(0x0042, 1, 2, 3, 4), raw(0x0043)), udp, nil,
			want{code: 420, dst: testSrc, padding: -1, unknown: []stun.AttrType{0x0042, 0x0043}}},
		{"unknown optional attribute", build(t, stun.BindingRequest, raw(0x8042, 1)), udp, nil, ok},
		{"other method", build(t, stun.NewType(stun.MethodAllocate, stun.ClassRequest)), udp, nil, want{code: 400, dst: testSrc, padding: -1}},
		{"empty", nil, udp, nil, want{drop: dropShort}},
		{"truncated header", plain[:19], udp, nil, want{drop: dropShort}},
		{"truncated body", plain[:len(plain)-4], udp, nil, want{drop: dropBadLength}},
		{"trailing bytes", append(append([]byte(nil), plain...), 0, 0, 0, 0), udp, nil, want{drop: dropBadLength}},
		{"rtp", mutate(plain, func(b []byte) []byte { b[0] = 0x80; return b }), udp, nil, want{drop: dropNotSTUN}},
		{"wrong cookie", mutate(plain, func(b []byte) []byte { b[4] ^= 1; return b }), udp, nil, want{drop: dropBadCookie}},
		{"bad fingerprint", mutate(plain, func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), udp, nil, want{drop: dropBadFingerprint}},
		{"fingerprint not last", appendAttr(append([]byte(nil), plain...), 0x8050, []byte{1}), udp, nil, want{drop: dropBadFingerprint}},
		{"attribute overruns message", mutate(build(t, stun.BindingRequest, raw(0x8050, 1, 2, 3, 4)), func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[22:], 200)
			return b
		}), udp, nil, want{drop: dropBadAttribute}},
		{"attribute flood", flood, udp, nil, want{drop: dropAttributeFlood}},
		{"oversize", build(t, stun.BindingRequest, raw(stun.AttrPadding, make([]byte, maxRequest)...)), udp, nil, want{drop: dropOversize}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep := testEP
			if tt.ep != nil {
				ep = *tt.ep
			}
			h := newHandler(ep, "traverse test")
			out := make([]byte, 0, maxRequest+4)
			r := h.handle(tt.in, testSrc, 0, tt.tr, out)
			if r.drop != tt.want.drop {
				t.Fatalf("drop = %q, want %q", reasonNames[r.drop], reasonNames[tt.want.drop])
			}
			if r.drop != dropNone {
				return
			}
			if r.from != tt.want.from || r.dst != tt.want.dst {
				t.Errorf("from %d to %s, want from %d to %s", r.from, r.dst, tt.want.from, tt.want.dst)
			}
			if cap(r.out) != cap(out) || &r.out[:1][0] != &out[:1][0] {
				t.Errorf("response left the caller's buffer")
			}
			m := &stun.Message{Raw: append([]byte(nil), r.out...)}
			if err := m.Decode(); err != nil {
				t.Fatalf("response does not decode: %v", err)
			}
			var req stun.Message
			req.Raw = tt.in
			_ = req.Decode()
			if req.Contains(stun.AttrFingerprint) {
				if err := stun.Fingerprint.Check(m); err != nil {
					t.Errorf("response fingerprint: %v", err)
				}
			} else if m.Contains(stun.AttrFingerprint) {
				t.Errorf("fingerprint in the answer to a request without")
			}
			if m.TransactionID != req.TransactionID {
				t.Errorf("transaction id changed")
			}
			var sw stun.Software
			if err := sw.GetFrom(m); err != nil || sw.String() != "traverse test" {
				t.Errorf("software %q %v", sw, err)
			}
			if tt.want.code != 0 {
				var ec stun.ErrorCodeAttribute
				if m.Type.Class != stun.ClassErrorResponse || ec.GetFrom(m) != nil || int(ec.Code) != tt.want.code {
					t.Fatalf("got %s %v, want error %d", m.Type, ec, tt.want.code)
				}
				if tt.want.unknown != nil {
					var ua stun.UnknownAttributes
					if err := ua.GetFrom(m); err != nil || len(ua) != len(tt.want.unknown) {
						t.Fatalf("unknown attributes %v %v, want %v", ua, err, tt.want.unknown)
					}
					for i := range ua {
						if ua[i] != tt.want.unknown[i] {
							t.Errorf("unknown attributes %v, want %v", ua, tt.want.unknown)
						}
					}
				}
				return
			}
			if m.Type != stun.BindingSuccess {
				t.Fatalf("type %s", m.Type)
			}
			var xa stun.XORMappedAddress
			if err := xa.GetFrom(m); err != nil || xa.String() != testSrc.String() {
				t.Errorf("xor-mapped-address %s %v, want %s", xa, err, testSrc)
			}
			if tt.tr == udp && !ep.rfc5780 {
				if m.Contains(stun.AttrResponseOrigin) || m.Contains(stun.AttrOtherAddress) || m.Contains(stun.AttrMappedAddress) {
					t.Errorf("rfc 5780 attributes without rfc 5780")
				}
			}
			if tt.tr == udp && ep.rfc5780 {
				var ro stun.ResponseOrigin
				if err := ro.GetFrom(m); err != nil || ro.String() != ep.addrs[r.from].String() {
					t.Errorf("response-origin %s %v, want %s", ro, err, ep.addrs[r.from])
				}
				var oa stun.OtherAddress
				err := oa.GetFrom(m)
				if ep.rfc5780 && (err != nil || oa.String() != ep.addrs[3].String()) {
					t.Errorf("other-address %s %v, want %s", oa, err, ep.addrs[3])
				}
				if !ep.rfc5780 && err == nil {
					t.Errorf("other-address without rfc 5780")
				}
			}
			p, err := m.Get(stun.AttrPadding)
			if tt.want.padding < 0 && err == nil {
				t.Errorf("unexpected padding")
			}
			if tt.want.padding >= 0 && len(p) != tt.want.padding {
				t.Errorf("padding %d bytes, want %d", len(p), tt.want.padding)
			}
		})
	}
}

func appendAttr(b []byte, typ uint16, v []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	binary.BigEndian.PutUint16(b[2:4], uint16(len(b)-headerSize))
	return b
}

// The request handler allocates nothing, for answers and for drops alike.
func TestHandleAllocs(t *testing.T) {
	h := newHandler(testEP, "traverse")
	out := make([]byte, 0, maxRequest+4)
	for _, in := range [][]byte{
		build(t, stun.BindingRequest, stun.Fingerprint),
		rfc5769Request,
		build(t, stun.BindingRequest, raw(stun.AttrChangeRequest, u32(changeIP|changePort)...), stun.Fingerprint),
		build(t, stun.BindingRequest, raw(stun.AttrPadding, make([]byte, 300)...), raw(stun.AttrResponsePort, 0x12, 0x34, 0, 0)),
		build(t, stun.BindingRequest, raw(0x0042, 1)),
		rfc5769IPv4Response,
		[]byte("not a stun message at all, just bytes"),
		mutate(rfc5769Request, func(b []byte) []byte { b[len(b)-1] ^= 1; return b }),
	} {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, 9}), 5000)
		if n := testing.AllocsPerRun(200, func() { h.handle(in, src, 0, udp, out) }); n != 0 {
			t.Errorf("%d allocations per request (%x...)", int(n), in[:min(len(in), 24)])
		}
	}
	v6 := netip.MustParseAddrPort("[2001:db8::1]:5000")
	in := build(t, stun.BindingRequest, stun.Fingerprint)
	if n := testing.AllocsPerRun(200, func() { h.handle(in, v6, 0, udp, out) }); n != 0 {
		t.Errorf("%d allocations per IPv6 request", int(n))
	}
}

func TestXORMappedIPv6(t *testing.T) {
	h := newHandler(endpoints{}, "")
	src := netip.MustParseAddrPort("[2001:db8::1234]:5000")
	r := h.handle(build(t, stun.BindingRequest), src, 0, udp, make([]byte, 0, maxRequest))
	m := &stun.Message{Raw: r.out}
	if err := m.Decode(); err != nil {
		t.Fatal(err)
	}
	var xa stun.XORMappedAddress
	if err := xa.GetFrom(m); err != nil || !xa.IP.Equal(net.ParseIP("2001:db8::1234")) || xa.Port != 5000 {
		t.Errorf("got %s %v", xa, err)
	}
	if _, err := m.Get(stun.AttrSoftware); err == nil {
		t.Errorf("software attribute when disabled")
	}
}

func BenchmarkHandle(b *testing.B) {
	h := newHandler(testEP, "traverse")
	out := make([]byte, 0, maxRequest+4)
	in := build(b, stun.BindingRequest, stun.Fingerprint)
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		h.handle(in, testSrc, 0, udp, out)
	}
}
