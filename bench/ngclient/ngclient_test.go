package ngclient

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/traverse-rtc/traverse/internal/testkit"
)

func TestTarget(t *testing.T) {
	sdp := func(ip string, port int) string {
		s := fmt.Sprintf("v=0\r\nc=IN IP4 %s\r\nm=audio %d RTP/AVP 0\r\n", ip, port)
		return fmt.Sprintf("d3:sdp%d:%s6:result2:oke", len(s), s)
	}
	for _, c := range []struct {
		name, resp string
		want       string // "" = an error
	}{
		{"ok", sdp("127.0.0.1", 20002), "127.0.0.1:20002"},
		{"error result", "d6:result5:error12:error-reason4:nonee", ""},
		{"no sdp", "d6:result2:oke", ""},
		{"port too large", sdp("127.0.0.1", 70000), ""},
		{"port zero", sdp("127.0.0.1", 0), ""},
		{"bad address", sdp("999.0.0.1", 20002), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Target(c.resp)
			if c.want == "" {
				if err == nil {
					t.Fatalf("Target = %v, want an error", got)
				}
				return
			}
			if err != nil || got != netip.MustParseAddrPort(c.want) {
				t.Fatalf("Target = %v, %v; want %s", got, err, c.want)
			}
		})
	}
}

func FuzzTarget(f *testing.F) {
	f.Add("d3:sdp40:c=IN IP4 127.0.0.1\r\nm=audio 20002 RTP/AVP6:result2:oke")
	f.Add("6:result2:ok m=audio 99999 c=IN IP4 1.2.3.4")
	f.Fuzz(func(t *testing.T, s string) {
		if a, err := Target(s); err == nil && (!a.IsValid() || a.Port() == 0) {
			t.Fatalf("Target(%q) = %v without an error", s, a)
		}
	})
}

// TestCall drives a fake rtpengine: the commands arrive bencoded with
// their cookie, and each answer's SDP address goes to the right side.
func TestCall(t *testing.T) {
	srv := testkit.ListenUDP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	var mu sync.Mutex
	var got []string
	go func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			cookie, cmd, _ := strings.Cut(string(buf[:n]), " ")
			mu.Lock()
			got = append(got, cmd)
			mu.Unlock()
			var port int
			switch {
			case strings.Contains(cmd, "7:command5:offer"):
				port = 20000
			case strings.Contains(cmd, "7:command6:answer"):
				port = 20002
			default:
				_, _ = srv.WriteToUDPAddrPort([]byte(cookie+" d6:result4:ponge"), from)
				continue
			}
			s := fmt.Sprintf("c=IN IP4 127.0.0.1\r\nm=audio %d RTP/AVP 0\r\n", port)
			// an answer to another cookie first: it is skipped
			_, _ = srv.WriteToUDPAddrPort([]byte("x"+cookie+" d6:result2:oke"), from)
			_, _ = srv.WriteToUDPAddrPort([]byte(fmt.Sprintf("%s d3:sdp%d:%s6:result2:oke", cookie, len(s), s)), from)
		}
	}()
	c, err := Dial(srv.LocalAddr().(interface{ AddrPort() netip.AddrPort }).AddrPort())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Ping() {
		t.Fatal("no pong")
	}
	a, b := netip.MustParseAddrPort("127.0.0.1:1000"), netip.MustParseAddrPort("127.0.0.1:2000")
	toB, toA, err := c.Call("x1", a, b)
	if err != nil {
		t.Fatal(err)
	}
	if toB.Port() != 20002 || toA.Port() != 20000 {
		t.Fatalf("toB %v toA %v: want 20002 (the answer's) and 20000 (the offer's)", toB, toA)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 || !strings.Contains(got[1], "7:call-id2:x1") || !strings.Contains(got[1], "m=audio 1000 ") ||
		!strings.Contains(got[2], "6:to-tag3:bx1") || !strings.Contains(got[2], "m=audio 2000 ") {
		t.Fatalf("commands sent: %q", got)
	}
}
