package turn

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

func FuzzParseChannelData(f *testing.F) {
	f.Add([]byte{0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4})
	f.Add([]byte{0x7f, 0xfe, 0x00, 0x01, 9, 0, 0, 0})
	f.Add([]byte{0x40, 0x01, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		num, data, err := parseChannelData(b)
		if err != nil {
			return
		}
		// Round trip: appending what was parsed yields the same prefix.
		out := appendChannelData(nil, num, data, false)
		if !bytes.Equal(out, b[:len(out)]) {
			t.Fatalf("round trip: %x -> %x", b, out)
		}
	})
}

func FuzzStreamFrameLen(f *testing.F) {
	f.Add([]byte{0x40, 0x00, 0x00, 0x05})
	f.Add([]byte{0x00, 0x01, 0x00, 0x08})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		n, ch, ok := streamFrameLen(b)
		if !ok {
			return
		}
		if n < 4 || n > maxFrame || (ch && n%4 != 0) {
			t.Fatalf("frame length %d (channel %v) from %x", n, ch, b)
		}
	})
}

func FuzzParseSendIndication(f *testing.F) {
	tid := [12]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	for _, peer := range []string{"192.0.2.1:5000", "[2001:db8::1]:6000"} {
		m := stun.MustBuild(stun.NewTransactionIDSetter(tid), stun.NewType(stun.MethodSend, stun.ClassIndication),
			peerAttr(netip.MustParseAddrPort(peer)), rawAttr{stun.AttrData, []byte("hello")})
		f.Add(m.Raw)
	}
	f.Add([]byte{0, 0x16, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		peer, data, err := parseSendIndication(b)
		if err != nil {
			return
		}
		// What parses must encode again: the Data indication of the same
		// payload and peer parses back to them.
		if len(data) > 1500 {
			return
		}
		buf := make([]byte, headroom+len(data)+4)
		copy(buf[headroom:], data)
		start, n := putDataIndication(buf, len(data), peer, &tid)
		p2, d2, err := parseSendIndication(buf[start : start+n])
		if err != nil || p2 != peer || !bytes.Equal(d2, data) {
			t.Fatalf("data indication round trip: %v %x %v (want %v %x)", p2, d2, err, peer, data)
		}
	})
}

type discardWriter struct{ n int }

func (d *discardWriter) WriteTo(b []byte, _ netip.AddrPort) error { d.n++; return nil }

// FuzzHandleMessage feeds arbitrary datagrams to a live server's control
// path and data path: nothing may panic or hang.
func FuzzHandleMessage(f *testing.F) {
	s, _ := newTestServer(f, func(c *Config) { c.AllowLoopbackPeers = true; c.AuthFailuresPerMinute = -1 })
	tid := [12]byte{9}
	seeds := []*stun.Message{
		stun.MustBuild(stun.NewTransactionIDSetter(tid), stun.BindingRequest, stun.Fingerprint),
		stun.MustBuild(stun.NewTransactionIDSetter(tid), stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestedUDP()),
		stun.MustBuild(stun.NewTransactionIDSetter(tid), stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestedUDP(),
			stun.NewUsername(testUser), stun.NewRealm(testRealm), stun.NewNonce("0123456789abcdef0123456789abcdef"),
			stun.NewLongTermIntegrity(testUser, testRealm, testPass), stun.Fingerprint),
		stun.MustBuild(stun.NewTransactionIDSetter(tid), stun.NewType(stun.MethodChannelBind, stun.ClassRequest),
			channelAttr(0x4000), peerAttr(netip.MustParseAddrPort("127.0.0.1:9"))),
		stun.MustBuild(stun.NewTransactionIDSetter(tid), stun.NewType(stun.MethodSend, stun.ClassIndication),
			peerAttr(netip.MustParseAddrPort("127.0.0.1:9")), rawAttr{stun.AttrData, []byte("x")}),
		// RFC 6062.
		stun.MustBuild(stun.NewTransactionIDSetter(tid), stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestedTCP()),
		stun.MustBuild(stun.NewTransactionIDSetter(tid), stun.NewType(stun.MethodConnect, stun.ClassRequest),
			peerAttr(netip.MustParseAddrPort("127.0.0.1:9"))),
		stun.MustBuild(stun.NewTransactionIDSetter(tid), stun.NewType(stun.MethodConnectionBind, stun.ClassRequest), connectionID(7)),
		// Port reservation (RFC 8656 section 7.2).
		stun.MustBuild(stun.NewTransactionIDSetter(tid), stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestedUDP(), evenPortR()),
		stun.MustBuild(stun.NewTransactionIDSetter(tid), stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestedUDP(),
			rawAttr{stun.AttrReservationToken, []byte{1, 2, 3, 4, 5, 6, 7, 8}}),
	}
	for _, m := range seeds {
		f.Add(m.Raw)
	}
	f.Add([]byte{0x40, 0x00, 0x00, 0x01, 0xff})
	w := &discardWriter{}
	f.Fuzz(func(t *testing.T, b []byte) {
		from := netip.MustParseAddrPort("127.0.0.1:40000")
		key := fiveTuple{protoUDP, from}
		var st relayStats
		if isChannelData(b) {
			s.relayChannelData(key, b, &st)
			return
		}
		s.handleMessage(b, key, sender{udp: w, addr: from}, &st)
	})
}

// addStreamSeeds seeds a TCP stream fuzz target: a Binding request, one
// followed by an Allocate, padded ChannelData before a request, a
// ChannelData header longer than its data, and a bad first byte.
func addStreamSeeds(f *testing.F) {
	tid := [12]byte{7}
	bind := stun.MustBuild(stun.NewTransactionIDSetter(tid), stun.BindingRequest).Raw
	alloc := stun.MustBuild(stun.NewTransactionIDSetter(tid), stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestedUDP()).Raw
	f.Add(bind)
	f.Add(append(append([]byte{}, bind...), alloc...))
	f.Add(append(appendChannelData(nil, 0x4000, []byte{1, 2, 3}, true), bind...))
	f.Add([]byte{0x40, 0x00, 0xff, 0xff, 1})
	f.Add([]byte{0x80, 0, 0, 0})
}

// FuzzStreamConn feeds an arbitrary byte stream to a TCP client
// connection's reader (STUN and padded ChannelData framing, RFC 8656
// section 12.5): it must end cleanly, never hang or panic.
func FuzzStreamConn(f *testing.F) {
	s, _ := newTestServer(f, func(c *Config) { c.AllowLoopbackPeers = true; c.AuthFailuresPerMinute = -1 })
	addStreamSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		client, server := net.Pipe()
		sc := &streamConn{s: s, c: server, proto: protoTCP, remote: netip.MustParseAddrPort("127.0.0.1:40001"),
			q: make(chan *[]byte, streamQueue), done: make(chan struct{})}
		s.mu.Lock()
		s.streams[sc] = struct{}{}
		s.mu.Unlock()
		s.m.streamConns.Inc()
		done := make(chan struct{}, 2)
		go func() { sc.readLoop(); done <- struct{}{} }()
		go func() { sc.writeLoop(); done <- struct{}{} }()
		go func() { _, _ = io.Copy(io.Discard, client) }()
		_ = client.SetWriteDeadline(time.Now().Add(2 * time.Second))
		_, _ = client.Write(b)
		client.Close()
		for i := 0; i < 2; i++ {
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("stream reader or writer did not end")
			}
		}
	})
}

// FuzzLoopStream feeds an arbitrary byte stream to a TCP client connection
// served by an event loop (stream_linux.go: chunked reads, frames parsed
// in place, split frames carried over): the server must answer or close,
// never hang or panic, and close the connection once the client is done.
func FuzzLoopStream(f *testing.F) {
	s, _ := newTestServer(f, func(c *Config) { c.AllowLoopbackPeers = true; c.AuthFailuresPerMinute = -1 })
	addStreamSeeds(f)
	f.Add(stun.MustBuild(stun.NewTransactionIDSetter([12]byte{7}), stun.NewType(stun.MethodConnectionBind, stun.ClassRequest), connectionID(7)).Raw)
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := net.Dial("tcp", s.TCPAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		go func() { _, _ = c.Write(b); _ = c.(*net.TCPConn).CloseWrite() }()
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("server did not close the connection: %v", err)
		}
	})
}

// FuzzRESTExpiry: the REST user name parser accepts exactly
// "DIGITS[:anything]" with at most 18 digits, and its value is the digits'.
func FuzzRESTExpiry(f *testing.F) {
	for _, s := range []string{"1796614570:bob", "1796614570", "+1796614570:bob", "-1", " 1", "1 :x", "", ":", "999999999999999999", "9999999999999999999:x", "0x10:a", "１２:x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		exp, ok := restExpiry(name)
		ts, _, _ := strings.Cut(name, ":")
		digits := ts != "" && len(ts) <= 18 && strings.Trim(ts, "0123456789") == ""
		if ok != digits {
			t.Fatalf("restExpiry(%q) ok=%v, digits=%v", name, ok, digits)
		}
		if ok {
			n, err := strconv.ParseInt(ts, 10, 64)
			if err != nil || exp.Unix() != n {
				t.Fatalf("restExpiry(%q) = %d, want %d (%v)", name, exp.Unix(), n, err)
			}
		}
	})
}

// FuzzNonce: any string is judged without panicking, and a nonce is good
// only for the 5-tuple it was issued to (another port with anyPort, as
// ConnectionBind may).
func FuzzNonce(f *testing.F) {
	n := newNonces(time.Minute)
	now := time.Now()
	key := fiveTuple{protoTCP, netip.MustParseAddrPort("192.0.2.1:4000")}
	f.Add(n.issue(key, now), uint16(4000))
	f.Add(n.issue(key, now), uint16(4001))
	f.Add("", uint16(1))
	f.Add("AAAAAAAAAAAAAAAAAAAAAAAA", uint16(0))
	f.Fuzz(func(t *testing.T, nonce string, port uint16) {
		k := fiveTuple{protoTCP, netip.AddrPortFrom(key.client.Addr(), port)}
		strict := n.valid(nonce, k, now, false)
		loose := n.valid(nonce, k, now, true)
		if strict && !loose {
			t.Fatal("valid for its port but not for any port")
		}
		if strict && port != 4000 && nonce == n.issue(key, now) {
			t.Fatalf("nonce of port 4000 valid for port %d", port)
		}
		if n.valid(nonce, fiveTuple{protoUDP, k.client}, now, true) && loose {
			t.Fatal("a nonce valid for two transports")
		}
	})
}
