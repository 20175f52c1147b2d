// Command stunload is a bounded STUN Binding load generator: several UDP
// sockets each send a burst of Binding requests, wait for the answers (or a
// short timeout), and repeat until the duration or the request budget is
// spent. It reports how many requests were sent and answered. It reads and
// writes in batches (internal/udpio) so that it costs the shared CPUs as
// little as possible next to the server it measures.
//
//	go run ./bench/stunload -server 127.0.0.1:3478 -duration 5s
package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

const (
	magicCookie = 0x2112A442
	maxDuration = 2 * time.Minute
	maxRequests = 100_000_000
)

type result struct {
	Server   string  `json:"server"`
	Sockets  int     `json:"sockets"`
	Burst    int     `json:"burst"`
	Seconds  float64 `json:"seconds"`
	Sent     int64   `json:"sent"`
	Answered int64   `json:"answered"`
	Rate     float64 `json:"answered_per_second"`
	Loss     float64 `json:"loss"`
}

func main() {
	server := flag.String("server", "127.0.0.1:3478", "STUN server `host:port`")
	local := flag.String("local", "127.0.0.1", "local `IP` to send from")
	sockets := flag.Int("sockets", 8, "client sockets, each with its own goroutine")
	burst := flag.Int("burst", 32, "requests per burst per socket (at most 64)")
	wait := flag.Duration("wait", 20*time.Millisecond, "longest wait for a burst's answers")
	duration := flag.Duration("duration", 5*time.Second, "how long to send (at most 2m)")
	total := flag.Int64("requests", 10_000_000, "most requests to send in all")
	flag.Parse()
	if err := run(*server, *local, *sockets, *burst, *wait, *duration, *total); err != nil {
		fmt.Fprintln(os.Stderr, "stunload:", err)
		os.Exit(1)
	}
}

func run(server, local string, sockets, burst int, wait, duration time.Duration, total int64) error {
	dst, err := netip.ParseAddrPort(server)
	if err != nil {
		return err
	}
	if !dst.Addr().IsLoopback() && !dst.Addr().IsPrivate() {
		return errors.New("refusing a destination outside loopback and private ranges")
	}
	if burst < 1 || burst > 64 || sockets < 1 || sockets > 256 {
		return errors.New("burst must be 1..64 and sockets 1..256")
	}
	duration = min(duration, maxDuration)
	total = min(total, maxRequests)
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var sent, answered atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, sockets)
	start := time.Now()
	for i := 0; i < sockets; i++ {
		c, err := udpio.Listen(ctx, "udp", netip.AddrPortFrom(netip.MustParseAddr(local), 0).String(), udpio.Options{ReadBuffer: 1 << 20})
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			errs <- drive(ctx, c, dst, burst, wait, total, &sent, &answered)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	secs := time.Since(start).Seconds()
	r := result{Server: server, Sockets: sockets, Burst: burst, Seconds: secs, Sent: sent.Load(), Answered: answered.Load()}
	r.Rate = float64(r.Answered) / secs
	if r.Sent > 0 {
		r.Loss = 1 - float64(r.Answered)/float64(r.Sent)
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// drive sends bursts from c until ctx ends or the budget is spent.
func drive(ctx context.Context, c *udpio.Conn, dst netip.AddrPort, burst int, wait time.Duration, total int64, sent, answered *atomic.Int64) error {
	out := udpio.NewMessages(burst, 20)
	in := udpio.NewMessages(burst, 512)
	var prefix [4]byte
	if _, err := rand.Read(prefix[:]); err != nil {
		return err
	}
	for i := range out {
		b := out[i].Buf[:20]
		binary.BigEndian.PutUint16(b[0:], 0x0001) // Binding request
		binary.BigEndian.PutUint16(b[2:], 0)
		binary.BigEndian.PutUint32(b[4:], magicCookie)
		copy(b[8:12], prefix[:])
		out[i].N = 20
		out[i].Addr = dst
	}
	uc := c.UDPConn()
	var seq uint64
	for ctx.Err() == nil {
		if sent.Add(int64(burst)) > total {
			sent.Add(-int64(burst))
			return nil
		}
		first := seq
		for i := range out {
			binary.BigEndian.PutUint64(out[i].Buf[12:20], seq)
			seq++
		}
		if _, err := c.WriteBatch(out); err != nil {
			return err
		}
		got := 0
		deadline := time.Now().Add(wait)
		_ = uc.SetReadDeadline(deadline)
		for got < burst {
			n, err := c.ReadBatch(in)
			if err != nil {
				break // deadline: the rest of the burst is lost
			}
			for i := 0; i < n; i++ {
				b := in[i].Payload()
				if len(b) >= 20 && b[0] == 0x01 && b[1] == 0x01 && [4]byte(b[8:12]) == prefix {
					if s := binary.BigEndian.Uint64(b[12:20]); s >= first && s < seq {
						got++
					}
				}
			}
		}
		answered.Add(int64(got))
	}
	return nil
}
