// Command stunload is a bounded STUN Binding load generator: several UDP
// sockets each send a burst of Binding requests, wait for the answers (or a
// short timeout), and repeat until the duration or the request budget is
// spent. It reports how many requests were sent and answered. It reads and
// writes in batches (internal/udpio) so that it costs the shared CPUs as
// little as possible next to the server it measures.
//
// With -gso each socket is connected and a burst leaves in one write, the
// kernel cutting it into datagrams (UDP_SEGMENT); with -gro answers that a
// device's GRO merged are read as one buffer (UDP_GRO) and walked by their
// STUN length. Over lo a GSO burst reaches the server whole (lo does not
// segment), so -gso is for a veth whose sending side segments in software
// (gso_max_segs 1), as bench/stun-vs-coturn.sh TOPO=veth sets up.
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
	"net"
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
	Reads    int64   `json:"datagrams_read"` // GRO-merged ones count once
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
	var o opts
	flag.BoolVar(&o.gso, "gso", false, "connect each socket and send a burst in one write (UDP_SEGMENT)")
	flag.BoolVar(&o.gro, "gro", false, "read answers merged by GRO (UDP_GRO)")
	flag.Parse()
	if err := run(*server, *local, *sockets, *burst, *wait, *duration, *total, o); err != nil {
		fmt.Fprintln(os.Stderr, "stunload:", err)
		os.Exit(1)
	}
}

// opts are the generator's system-call savers.
type opts struct{ gso, gro bool }

func run(server, local string, sockets, burst int, wait, duration time.Duration, total int64, o opts) error {
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
	var sent, answered, reads atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, sockets)
	start := time.Now()
	for i := 0; i < sockets; i++ {
		c, err := open(ctx, local, dst, burst, o)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			errs <- drive(ctx, c, dst, burst, wait, total, o, &sent, &answered, &reads)
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
	r := result{Server: server, Sockets: sockets, Burst: burst, Seconds: secs, Sent: sent.Load(), Answered: answered.Load(), Reads: reads.Load()}
	r.Rate = float64(r.Answered) / secs
	if r.Sent > 0 {
		r.Loss = 1 - float64(r.Answered)/float64(r.Sent)
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// open makes one client socket: unconnected, or with o.gso connected to
// dst and segmenting writes into 20-byte requests.
func open(ctx context.Context, local string, dst netip.AddrPort, burst int, o opts) (*udpio.Conn, error) {
	laddr := netip.AddrPortFrom(netip.MustParseAddr(local), 0)
	if !o.gso {
		c, err := udpio.Listen(ctx, "udp", laddr.String(), udpio.Options{ReadBuffer: 1 << 20, Batch: burst})
		if err == nil && o.gro {
			err = udpio.SetGRO(c.UDPConn(), true)
		}
		return c, err
	}
	uc, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(laddr), net.UDPAddrFromAddrPort(dst))
	if err != nil {
		return nil, err
	}
	_ = uc.SetReadBuffer(1 << 20)
	if err := udpio.SetSegment(uc, 20); err != nil {
		uc.Close()
		return nil, err
	}
	if o.gro {
		if err := udpio.SetGRO(uc, true); err != nil {
			uc.Close()
			return nil, err
		}
	}
	return udpio.New(uc, burst)
}

// drive sends bursts from c until ctx ends or the budget is spent.
func drive(ctx context.Context, c *udpio.Conn, dst netip.AddrPort, burst int, wait time.Duration, total int64, o opts, sent, answered, reads *atomic.Int64) error {
	out := udpio.NewMessages(burst, 20)
	// One write of burst requests when segmenting: the kernel cuts it.
	whole := make([]byte, 20*burst)
	// A read may hold up to 64 answers merged by GRO.
	in := udpio.NewMessages(burst, map[bool]int{false: 512, true: 64 << 10}[o.gro])
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
	var datagrams int64
	defer func() { reads.Add(datagrams) }()
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
		if o.gso {
			for i := range out {
				copy(whole[20*i:], out[i].Buf[:20])
			}
			if _, err := c.UDPConn().Write(whole); err != nil {
				return err
			}
		} else if _, err := c.WriteBatch(out); err != nil {
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
			datagrams += int64(n)
			for i := 0; i < n; i++ {
				got += count(in[i].Payload(), o.gro, prefix, first, seq)
			}
		}
		answered.Add(int64(got))
	}
	return nil
}

// count returns how many answers to this socket's requests first..seq-1
// b holds: one datagram, or with gro several back to back, each a whole
// STUN message (20 bytes + its length field), which is how they are told
// apart.
func count(b []byte, gro bool, prefix [4]byte, first, seq uint64) int {
	got := 0
	for len(b) >= 20 {
		if !gro && got > 0 {
			break
		}
		m := b[:min(len(b), 20+int(binary.BigEndian.Uint16(b[2:4])))]
		if b[0] == 0x01 && b[1] == 0x01 && [4]byte(b[8:12]) == prefix {
			if s := binary.BigEndian.Uint64(b[12:20]); s >= first && s < seq {
				got++
			}
		}
		b = b[len(m):]
	}
	return got
}
