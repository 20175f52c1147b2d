// Command udpfwd is the ceiling of the SFU benchmark: a plain batched Go UDP
// forwarder (internal/udpio, recvmmsg/sendmmsg) doing an SFU's fan-out
// with none of its work (no ICE, DTLS, SRTP, RTCP, rewriting), and the load
// driver that offers it the same packets per second as `traverse load`.
//
//	udpfwd -mode server -listen 127.0.0.1:7990
//	udpfwd -mode load -server 127.0.0.1:7990 -server-pid PID -rooms 1 -publishers 1 -subscribers 50 -duration 10s
//
// Participants register by sending a packet whose first two bytes are the
// room number; the server forwards every later packet of a room member to
// every other member of that room.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"time"

	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/procstat"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

func main() {
	mode := flag.String("mode", "server", "server or load")
	listen := flag.String("listen", "127.0.0.1:7990", "server: address")
	server := flag.String("server", "127.0.0.1:7990", "load: server address")
	pid := flag.Int("server-pid", 0, "load: server process for CPU accounting")
	rooms := flag.Int("rooms", 1, "load: rooms")
	pubs := flag.Int("publishers", 1, "load: publishers per room")
	subs := flag.Int("subscribers", 1, "load: subscribers per room")
	dur := flag.Duration("duration", 10*time.Second, "load: measurement time")
	bitrate := flag.Int("video-bitrate", 1_000_000, "load: video bit/s per publisher")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var err error
	if *mode == "server" {
		err = serve(ctx, *listen)
	} else {
		err = load(ctx, *server, *pid, *rooms, *pubs, *subs, *dur, *bitrate)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "udpfwd:", err)
		os.Exit(1)
	}
}

func serve(ctx context.Context, addr string) error {
	c, err := udpio.Listen(ctx, "udp4", addr, udpio.Options{ReadBuffer: 4 << 20, WriteBuffer: 4 << 20})
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); c.Close() }()
	members := map[netip.AddrPort]uint16{}
	roomOf := map[uint16][]netip.AddrPort{}
	in := udpio.NewMessages(64, 1500)
	out := make([]udpio.Message, 0, 64*64)
	for {
		n, err := c.ReadBatch(in)
		if err != nil {
			return nil
		}
		out = out[:0]
		for i := 0; i < n; i++ {
			m := &in[i]
			r, ok := members[m.Addr]
			if !ok {
				if m.N < 2 {
					continue
				}
				r = binary.BigEndian.Uint16(m.Buf)
				members[m.Addr] = r
				roomOf[r] = append(roomOf[r], m.Addr)
				continue
			}
			for _, d := range roomOf[r] {
				if d != m.Addr {
					out = append(out, udpio.Message{Buf: m.Buf, N: m.N, Addr: d})
				}
			}
		}
		for len(out) > 0 {
			k, err := c.WriteBatch(out)
			if err != nil {
				break
			}
			out = out[k:]
		}
	}
}

func load(ctx context.Context, server string, pid, rooms, pubs, subs int, dur time.Duration, bitrate int) error {
	dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(server))
	var received atomic.Uint64
	var sent atomic.Uint64
	var conns []*net.UDPConn
	var wg sync.WaitGroup
	lctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}()
	for r := range rooms {
		for i := range pubs + subs {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				return err
			}
			_ = c.SetReadBuffer(1 << 20)
			conns = append(conns, c)
			var hello [2]byte
			binary.BigEndian.PutUint16(hello[:], uint16(r))
			if _, err := c.WriteToUDP(hello[:], dst); err != nil {
				return err
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 1600)
				for {
					if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
						return
					}
					received.Add(1)
				}
			}()
			if i < pubs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					publish(lctx, c, dst, bitrate, &sent)
				}()
			}
		}
	}
	time.Sleep(time.Second)
	r0, s0 := received.Load(), sent.Load()
	cpu0 := procstat.ReadPID(pid).CPU()
	t0 := time.Now()
	select {
	case <-time.After(dur):
	case <-ctx.Done():
	}
	secs := time.Since(t0).Seconds()
	cpu := procstat.ReadPID(pid).CPU() - cpu0
	got := received.Load() - r0
	res := map[string]any{
		"rooms": rooms, "publishers_per_room": pubs, "subscribers_per_room": subs,
		"seconds": secs, "published_packets_per_second": float64(sent.Load()-s0) / secs,
		"packets_received": got, "packets_per_second": float64(got) / secs,
		"expected_packets_per_second": float64(sent.Load()-s0) / secs * float64(pubs+subs-1),
		"server_cpu_seconds":          cpu,
	}
	if got > 0 && cpu > 0 {
		res["cpu_seconds_per_million_packets"] = cpu / float64(got) * 1e6
		res["packets_per_cpu_second"] = float64(got) / cpu
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(res)
}

// publish sends what a loadgen publisher sends: video in 1200-byte
// packets at bitrate and a 120-byte audio packet every 20 ms.
func publish(ctx context.Context, c *net.UDPConn, dst *net.UDPAddr, bitrate int, sent *atomic.Uint64) {
	video := make([]byte, 1212)
	audio := make([]byte, 132)
	perTick := float64(bitrate) / 8 / 100
	credit := 0.0
	loadgen.Pace(ctx, 10*time.Millisecond, 10, func(tick uint32) {
		credit += perTick
		for credit >= 1200 || (tick%3 == 0 && credit > 0) {
			n := min(1200, int(credit))
			credit -= float64(n)
			if _, err := c.WriteToUDP(video[:max(n, 16)+12], dst); err == nil {
				sent.Add(1)
			}
		}
		if tick%2 == 0 {
			if _, err := c.WriteToUDP(audio, dst); err == nil {
				sent.Add(1)
			}
		}
	})
}
