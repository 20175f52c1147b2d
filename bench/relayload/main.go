// Command relayload drives a traverse relay node for bench/relay-vs-turn.sh:
// it mints grants with the bench's grant seed, binds SESSIONS pairs of
// peers, and on each pair sends MSGS datagrams of LEN bytes INTERVAL apart
// from side 0, which side 1 echoes back: each delivered message is relayed
// twice by the node, as turnutils_uclient's messages are by a TURN server.
// It prints "sent S echoed E relayed R lost L".
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"log"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/traverse-rtc/traverse/internal/relaynode"
	"github.com/traverse-rtc/traverse/internal/relayproto"
)

func main() {
	node := flag.String("node", "127.0.0.1:3490", "relay node `address`")
	id := flag.String("id", "bench", "relay node `id`")
	seed := flag.String("seed", "", "grant `seed` (base64url), traverse relay --keygen")
	sessions := flag.Int("sessions", 20, "session pairs")
	msgs := flag.Int("msgs", 1000, "messages per session")
	interval := flag.Duration("interval", 5*time.Millisecond, "between messages of one session")
	size := flag.Int("len", 172, "datagram payload bytes")
	flag.Parse()
	sb, err := base64.RawURLEncoding.DecodeString(*seed)
	if err != nil || len(sb) != ed25519.SeedSize {
		log.Fatal("relayload: -seed must be a base64url Ed25519 seed")
	}
	key := ed25519.NewKeyFromSeed(sb)
	addr := netip.MustParseAddrPort(*node)
	var sent, echoed, back atomic.Int64
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	links := make([][2]*relaynode.Link, *sessions)
	for i := range links {
		var s relayproto.Session
		_, _ = rand.Read(s[:])
		var bw sync.WaitGroup
		for side := range uint8(2) {
			g, err := relayproto.AppendGrant(nil, relayproto.Grant{Session: s, Side: side, Node: *id, Expires: time.Now().Add(time.Hour)}, key)
			if err != nil {
				log.Fatal(err)
			}
			pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				log.Fatal(err)
			}
			_ = pc.SetReadBuffer(1 << 20)
			bw.Add(1)
			go func() {
				defer bw.Done()
				l, err := relaynode.Bind(ctx, pc, addr, g)
				if err != nil {
					log.Fatalf("bind: %v", err)
				}
				links[i][side] = l
			}()
		}
		bw.Wait()
	}
	payload := make([]byte, *size)
	for _, l := range links {
		a, b := l[0], l[1]
		wg.Add(3)
		go func() { // side 1 echoes
			defer wg.Done()
			buf := make([]byte, 2048)
			for {
				n, _, err := b.ReadFrom(buf)
				if err != nil {
					return
				}
				echoed.Add(1)
				_ = b.WriteTo(buf[:n], netip.AddrPort{})
			}
		}()
		go func() { // side 0 counts echoes
			defer wg.Done()
			buf := make([]byte, 2048)
			for {
				if _, _, err := a.ReadFrom(buf); err != nil {
					return
				}
				back.Add(1)
			}
		}()
		go func() {
			defer wg.Done()
			t := time.NewTicker(*interval)
			defer t.Stop()
			for range *msgs {
				<-t.C
				if a.WriteTo(payload, netip.AddrPort{}) == nil {
					sent.Add(1)
				}
			}
		}()
	}
	// Senders end after msgs*interval; then wait for the stragglers.
	time.Sleep(time.Duration(*msgs)**interval + 500*time.Millisecond)
	for _, l := range links {
		_ = l[0].SetReadDeadline(time.Now())
		_ = l[1].SetReadDeadline(time.Now())
	}
	wg.Wait()
	s, e, r := sent.Load(), echoed.Load(), back.Load()
	fmt.Printf("sent %d echoed %d relayed %d lost %d\n", s, e, e+r, 2*s-(e+r))
}
