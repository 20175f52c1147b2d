//go:build linux

package udpio

import (
	"bytes"
	"net"
	"testing"
	"time"
)

// TestSegmentAndGRO: one write on a socket with UDP_SEGMENT leaves as
// datagrams of the segment size; a receiver without UDP_GRO reads them one
// by one, a receiver with it (over lo the segmented skb arrives whole)
// reads them as one buffer of back-to-back datagrams.
func TestSegmentAndGRO(t *testing.T) {
	for _, gro := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "gro"}[gro], func(t *testing.T) {
			rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer rx.Close()
			if err := SetGRO(rx, gro); err != nil {
				t.Fatal(err)
			}
			tx, err := net.DialUDP("udp4", nil, rx.LocalAddr().(*net.UDPAddr))
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Close()
			if err := SetSegment(tx, 20); err != nil {
				t.Fatal(err)
			}
			msg := make([]byte, 5*20)
			for i := range msg {
				msg[i] = byte(i / 20)
			}
			if n, err := tx.Write(msg); err != nil || n != len(msg) {
				t.Fatalf("write: %d, %v", n, err)
			}
			var got []byte
			reads := 0
			buf := make([]byte, 2048)
			_ = rx.SetReadDeadline(time.Now().Add(5 * time.Second))
			for len(got) < len(msg) {
				n, err := rx.Read(buf)
				if err != nil {
					t.Fatalf("read after %d bytes: %v", len(got), err)
				}
				if !gro && n != 20 {
					t.Fatalf("datagram of %d bytes, want 20", n)
				}
				got = append(got, buf[:n]...)
				reads++
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("got %x, want %x", got, msg)
			}
			if want := map[bool]int{false: 5, true: 1}[gro]; reads != want {
				t.Fatalf("%d reads, want %d", reads, want)
			}
		})
	}
}
