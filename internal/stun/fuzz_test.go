package stun

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/pion/stun/v3"
)

// FuzzServerHandle feeds arbitrary datagrams to the request handler, over
// every transport and from each RFC 5780 socket: it must never panic, must
// drop with a known reason or answer with a message that decodes, carries
// the request's transaction ID and a valid FINGERPRINT when the request
// had one, and must never outgrow the caller's buffer; without RFC 5780,
// an answer is never much longer than its request.
func FuzzServerHandle(f *testing.F) {
	plain := build(f, stun.BindingRequest, stun.Fingerprint)
	f.Add(plain, uint8(0))
	f.Add(rfc5769Request, uint8(0))
	f.Add(rfc5769IPv4Response, uint8(0))
	f.Add(plain[:19], uint8(0))                                                            // truncated header
	f.Add(plain[:len(plain)-4], uint8(0))                                                  // truncated body
	f.Add(mutate(plain, func(b []byte) []byte { b[4] = 0; return b }), uint8(0))           // wrong cookie
	f.Add(mutate(plain, func(b []byte) []byte { b[len(b)-1]++; return b }), uint8(1))      // bad fingerprint
	f.Add(mutate(plain, func(b []byte) []byte { b[0] = 0x80; return b }), uint8(2))        // RTP
	f.Add(build(f, stun.BindingRequest, raw(stun.AttrChangeRequest, u32(6)...)), uint8(3)) // change request
	f.Add(build(f, stun.BindingRequest, raw(stun.AttrResponsePort, 0, 80, 0, 0)), uint8(4))
	f.Add(build(f, stun.BindingRequest, raw(stun.AttrPadding, make([]byte, 1900)...)), uint8(0)) // near oversize
	f.Add(build(f, stun.BindingRequest, raw(stun.AttrPadding, make([]byte, 3000)...)), uint8(0)) // oversize
	f.Add(build(f, stun.BindingRequest, raw(0x0042, 1)), uint8(5))                               // unknown required
	flood := build(f, stun.BindingRequest)
	for range 200 {
		flood = appendAttr(flood, 0x8050, nil)
	}
	f.Add(flood, uint8(0))
	f.Add(mutate(plain, func(b []byte) []byte { binary.BigEndian.PutUint16(b[2:], 0xfffc); return b }), uint8(0))
	f.Fuzz(func(t *testing.T, in []byte, sel uint8) {
		h := newHandler(testEP, "fuzz")
		if sel&0x80 != 0 {
			h = newHandler(endpoints{addrs: [4]netip.AddrPort{testEP.addrs[0], testEP.addrs[0], testEP.addrs[0], testEP.addrs[0]}}, "")
		}
		out := make([]byte, 0, maxRequest+4)
		tr := transport(sel % uint8(numTransports))
		via := int(sel>>2) & 3
		r := h.handle(in, testSrc, via, tr, out)
		if r.drop != dropNone {
			if r.drop >= numReasons {
				t.Fatalf("unknown drop reason %d", r.drop)
			}
			return
		}
		if len(r.out) > cap(out) || &r.out[:1][0] != &out[:1][0] {
			t.Fatalf("response outgrew the buffer: %d bytes", len(r.out))
		}
		if r.from < 0 || r.from > 3 {
			t.Fatalf("bad socket index %d", r.from)
		}
		m := &stun.Message{Raw: append([]byte(nil), r.out...)}
		if err := m.Decode(); err != nil {
			t.Fatalf("response does not decode: %v", err)
		}
		var req stun.Message
		req.Raw = in
		_ = req.Decode()
		if req.Contains(stun.AttrFingerprint) != m.Contains(stun.AttrFingerprint) {
			t.Fatalf("fingerprint in the request %v, in the answer %v", req.Contains(stun.AttrFingerprint), m.Contains(stun.AttrFingerprint))
		}
		if m.Contains(stun.AttrFingerprint) {
			if err := stun.Fingerprint.Check(m); err != nil {
				t.Fatalf("response fingerprint: %v", err)
			}
		}
		// Without RFC 5780 and SOFTWARE, an answer is at most 48 bytes
		// longer than its request (a 420 for one unknown attribute).
		if sel&0x80 != 0 && len(r.out) > len(in)+48 {
			t.Fatalf("%d-byte answer to a %d-byte request", len(r.out), len(in))
		}
		if string(m.Raw[8:20]) != string(in[8:20]) {
			t.Fatalf("transaction id changed")
		}
		if r.dst.Addr() != testSrc.Addr() {
			t.Fatalf("answer to another host %s", r.dst)
		}
	})
}
