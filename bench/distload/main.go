// Command distload is the load driver of bench/distribute-vs-udpfwd.sh: one
// sender of 200-byte RTP at a fixed packet rate and N receivers on
// loopback, against either `traverse distribute` (the stream and its
// receivers added through its HTTP API) or bench/udpfwd (a plain batched
// Go forwarder: every member of room 0 gets every other member's packets).
// It measures the whole machine's cost of the fan-out: the server
// process's CPU, its own (the sender's and receivers' system calls, the
// same for both servers), and softirq time on every CPU plus ksoftirqd,
// per delivered copy; it prints one JSON object.
//
// With -receivers, the receivers are elsewhere (bench/distribute-vs-udpfwd.sh's
// veth setup: a namespace that counts and drops the copies at its
// interface's ingress, before any socket): no receiving socket is opened
// here, and -count is a shell command that prints the number of copies
// delivered so far (run for each reading; its own CPU is not counted).
//
//	distload -mode distribute -target 127.0.0.1:5004 -api http://127.0.0.1:8095 -token T -server-pid PID -fan 16
//	distload -mode udpfwd -target 127.0.0.1:7990 -server-pid PID -fan 16
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/traverse-rtc/traverse/internal/procstat"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

func main() {
	mode := flag.String("mode", "distribute", "distribute or udpfwd")
	target := flag.String("target", "127.0.0.1:5004", "server media address")
	api := flag.String("api", "http://127.0.0.1:8095", "distribute: control API URL")
	token := flag.String("token", "", "distribute: API token")
	pid := flag.Int("server-pid", 0, "server process, for CPU accounting")
	fan := flag.Int("fan", 16, "receivers")
	pps := flag.Int("pps", 5000, "packets per second sent")
	size := flag.Int("size", 200, "RTP packet size in bytes")
	dur := flag.Duration("duration", 5*time.Second, "measurement time")
	remote := flag.String("receivers", "", "comma-separated receiver `host:port`s elsewhere (no local receiving sockets); needs -count")
	count := flag.String("count", "", "with -receivers: shell `command` printing the copies delivered so far")
	flag.Parse()
	if *remote != "" {
		if *count == "" {
			fmt.Fprintln(os.Stderr, "distload: -receivers needs -count")
			os.Exit(2)
		}
		for _, a := range strings.Split(*remote, ",") {
			remoteAddrs = append(remoteAddrs, netip.MustParseAddrPort(a))
		}
		countCmd = *count
	}
	if err := run(*mode, netip.MustParseAddrPort(*target), *api, *token, *pid, *fan, *pps, *size, *dur); err != nil {
		fmt.Fprintln(os.Stderr, "distload:", err)
		os.Exit(1)
	}
}

// remoteAddrs and countCmd: -receivers and -count.
var (
	remoteAddrs []netip.AddrPort
	countCmd    string
)

// remoteCount runs countCmd: the copies delivered so far.
func remoteCount() uint64 {
	out, err := exec.Command("sh", "-c", countCmd).Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "distload: -count:", err)
		os.Exit(1)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, "distload: -count printed", strconv.Quote(string(out)))
		os.Exit(1)
	}
	return n
}

func run(mode string, target netip.AddrPort, api, token string, pid, fan, pps, size int, dur time.Duration) error {
	ctx := context.Background()
	var got atomic.Uint64
	var wg sync.WaitGroup
	var conns []*udpio.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}()
	var addrs []netip.AddrPort
	if remoteAddrs != nil {
		addrs, fan = remoteAddrs, len(remoteAddrs)
	}
	for range fan - len(addrs) {
		c, err := udpio.Listen(ctx, "udp4", "127.0.0.1:0", udpio.Options{ReadBuffer: 4 << 20})
		if err != nil {
			return err
		}
		conns = append(conns, c)
		addrs = append(addrs, c.LocalAddr())
		wg.Add(1)
		go func() {
			defer wg.Done()
			in := udpio.NewMessages(64, 2048)
			for {
				n, err := c.ReadBatch(in)
				if err != nil {
					return
				}
				got.Add(uint64(n))
			}
		}()
	}
	from := "127.0.0.1:0"
	if remoteAddrs != nil {
		from = "0.0.0.0:0"
	}
	snd, err := udpio.Listen(ctx, "udp4", from, udpio.Options{WriteBuffer: 4 << 20})
	if err != nil {
		return err
	}
	conns = append(conns, snd)
	switch mode {
	case "distribute":
		var rs []string
		for _, a := range addrs {
			rs = append(rs, `"`+a.String()+`"`)
		}
		body := `{"op":"add_stream","dst":"` + target.String() + `","receivers":[` + strings.Join(rs, ",") + `]}`
		req, _ := http.NewRequest("POST", api+"/v1/distribute", bytes.NewBufferString(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			return fmt.Errorf("add stream: HTTP %d", resp.StatusCode)
		}
	case "udpfwd":
		hello := []byte{0, 0} // room 0
		for _, c := range conns {
			if err := c.WriteTo(hello, target); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	time.Sleep(300 * time.Millisecond) // registrations settle

	// Send pps packets per second, every millisecond what is due (at
	// most 64 at once), so a late tick does not lower the rate.
	const tick = time.Millisecond
	out := udpio.NewMessages(64, size)
	for i := range out {
		b := out[i].Buf[:size]
		b[0], b[1] = 0x80, 96
		binary.BigEndian.PutUint32(b[8:], 0x5eed)
		out[i].N, out[i].Addr = size, target
	}
	var seq uint16
	sendFor := func(d time.Duration) (sent uint64) {
		t := time.NewTicker(tick)
		defer t.Stop()
		start := time.Now()
		for time.Since(start) < d {
			<-t.C
			due := int(time.Since(start).Seconds()*float64(pps)) - int(sent)
			k := min(max(due, 0), len(out))
			for i := range out[:k] {
				seq++
				binary.BigEndian.PutUint16(out[i].Buf[2:], seq)
			}
			n, _ := snd.WriteBatch(out[:k])
			sent += uint64(n)
		}
		return sent
	}
	delivered := got.Load
	if remoteAddrs != nil {
		delivered = remoteCount
	}
	settle := func() {
		for prev := delivered(); ; {
			time.Sleep(50 * time.Millisecond)
			cur := delivered()
			if cur == prev {
				return
			}
			prev = cur
		}
	}
	sendFor(500 * time.Millisecond) // warm up
	settle()
	g0, c0 := delivered(), snapshot(pid)
	t0 := time.Now()
	sent := sendFor(dur)
	settle() // the last copies arrive before counting
	secs := time.Since(t0).Seconds()
	c1 := snapshot(pid)
	copies := delivered() - g0
	srv, self, ksirq := c1.server-c0.server, c1.self-c0.self, c1.ksoftirqd-c0.ksoftirqd
	sirq := c1.softirq - c0.softirq + ksirq
	whole := srv + self + sirq
	// With tick-based CPU accounting (no CONFIG_IRQ_TIME_ACCOUNTING) a
	// tick that lands in softirq is added both to the interrupted task's
	// system time and to /proc/stat's softirq column: softirq work done
	// inside the server's or this process's system calls (the kernel
	// path's whole fan-out runs in the sender's sendmmsg) is in whole
	// twice. single counts each task once and no /proc/stat softirq: it
	// misses only softirq that ran in unrelated tasks' contexts.
	single := srv + self + ksirq
	res := map[string]any{
		"mode": mode, "fan": fan, "size": size, "seconds": secs,
		"sent": sent, "delivered": copies, "expected": sent * uint64(fan),
		"cpu_seconds": map[string]float64{"server": srv, "driver": self, "softirq_and_ksoftirqd": sirq, "ksoftirqd": ksirq},
	}
	if copies > 0 {
		res["server_us_per_copy"] = srv / float64(copies) * 1e6
		res["whole_us_per_copy"] = whole / float64(copies) * 1e6
		res["single_count_us_per_copy"] = single / float64(copies) * 1e6
		res["server_and_softirq_us_per_copy"] = (srv + sirq) / float64(copies) * 1e6
		res["whole_us_per_source_packet"] = whole / float64(sent) * 1e6
	}
	enc := json.NewEncoder(os.Stdout)
	return enc.Encode(res)
}

// cpu is a reading of the counters, in seconds: the server process, this
// one, every CPU's softirq time (/proc/stat) and the ksoftirqd threads.
type cpu struct{ server, self, softirq, ksoftirqd float64 }

func snapshot(pid int) cpu {
	self, _ := procstat.Read("self")
	m, _ := procstat.ReadMachine()
	c := cpu{self: self.CPU(), server: procstat.ReadPID(pid).CPU(), softirq: m.SoftIRQ}
	ks, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, f := range ks {
		b, err := os.ReadFile(f)
		if err == nil && strings.HasPrefix(string(b), "ksoftirqd/") {
			k, _ := procstat.Read(filepath.Base(filepath.Dir(f)))
			c.ksoftirqd += k.CPU()
		}
	}
	return c
}
