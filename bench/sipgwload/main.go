// Command sipgwload drives the same bounded RTP load through a media proxy
// (traverse sipgw's media proxy over its control protocol, rtpengine over
// its ng protocol) or straight through the router (direct), between a
// client network namespace and a server network namespace, and reports the
// CPU the proxy process, this driver and the whole machine spent per
// million forwarded packets. bench/sipgw-vs-rtpengine.sh runs it.
package main

import (
	"context"
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
	"syscall"
	"time"

	"github.com/vishvananda/netns"

	"github.com/traverse-rtc/traverse/bench/ngclient"
	"github.com/traverse-rtc/traverse/internal/mediaproxy"
	"github.com/traverse-rtc/traverse/internal/nsthread"
	"github.com/traverse-rtc/traverse/internal/procstat"
)

var (
	mode      = flag.String("mode", "traverse", "traverse, rtpengine or direct")
	control   = flag.String("control", "127.0.0.1:7722", "traverse media proxy control address (in -gw-ns)")
	ng        = flag.String("ng", "127.0.0.1:2223", "rtpengine ng address (in -gw-ns)")
	gwNS      = flag.String("gw-ns", "", "network namespace of the proxy's control socket")
	clientNS  = flag.String("client-ns", "", "network namespace of the clients")
	serverNS  = flag.String("server-ns", "", "network namespace of the servers")
	clientIP  = flag.String("client-ip", "10.1.0.2", "clients' address")
	serverIP  = flag.String("server-ip", "10.2.0.2", "servers' address")
	outsideIP = flag.String("outside-ip", "10.1.0.1", "the proxy's outside address (traverse fixed ports)")
	insideIP  = flag.String("inside-ip", "10.2.0.1", "the proxy's inside address (traverse inside ports)")
	calls     = flag.Int("calls", 500, "concurrent calls")
	pps       = flag.Int("pps", 50, "packets per second per call and direction")
	size      = flag.Int("size", 172, "RTP packet size in bytes")
	warmup    = flag.Duration("warmup", 3*time.Second, "traffic before the measured window (kernel offload happens here)")
	duration  = flag.Duration("duration", 10*time.Second, "measured window")
	pid       = flag.Int("pid", 0, "proxy process whose CPU to read (0: none)")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "sipgwload:", err)
		os.Exit(1)
	}
}

// inNS runs f on a thread switched into the named namespace ("" = current).
func inNS(name string, f func() error) error {
	if name == "" {
		return f()
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		return err
	}
	defer h.Close()
	return nsthread.Do(h, f)
}

func listen(ns, ip string) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := inNS(ns, func() error {
		var err error
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ip)})
		return err
	})
	return c, err
}

type leg struct {
	conn   *net.UDPConn
	target netip.AddrPort
	ssrc   uint32
}

func addrOf(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

func run() error {
	n := *calls
	clients, servers := make([]*leg, n), make([]*leg, n)
	for i := 0; i < n; i++ {
		c, err := listen(*clientNS, *clientIP)
		if err != nil {
			return err
		}
		s, err := listen(*serverNS, *serverIP)
		if err != nil {
			return err
		}
		clients[i] = &leg{conn: c, ssrc: uint32(i + 1)}
		servers[i] = &leg{conn: s, ssrc: 0x80000000 + uint32(i)}
	}
	var teardown func()
	switch *mode {
	case "direct":
		for i := range clients {
			clients[i].target, servers[i].target = addrOf(servers[i].conn), addrOf(clients[i].conn)
		}
	case "traverse":
		var err error
		if teardown, err = setupTraverse(clients, servers); err != nil {
			return err
		}
	case "rtpengine":
		var err error
		if teardown, err = setupRtpengine(clients, servers); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown mode %q", *mode)
	}

	var recvClient, recvServer atomic.Uint64
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		for _, x := range []struct {
			c   *net.UDPConn
			cnt *atomic.Uint64
		}{{clients[i].conn, &recvClient}, {servers[i].conn, &recvServer}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 2048)
				for {
					if _, _, err := x.c.ReadFromUDPAddrPort(buf); err != nil {
						if errors.Is(err, net.ErrClosed) {
							return
						}
						continue
					}
					x.cnt.Add(1)
				}
			}()
		}
	}
	var sent atomic.Uint64
	ctx, cancel := context.WithCancel(context.Background())
	for _, side := range [][]*leg{clients, servers} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pkt := make([]byte, *size)
			pkt[0], pkt[1] = 0x80, 0
			t := time.NewTicker(time.Second / time.Duration(*pps))
			defer t.Stop()
			var seq uint16
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				seq++
				for _, l := range side {
					binary.BigEndian.PutUint16(pkt[2:], seq)
					binary.BigEndian.PutUint32(pkt[4:], uint32(seq)*160)
					binary.BigEndian.PutUint32(pkt[8:], l.ssrc)
					if _, err := l.conn.WriteToUDPAddrPort(pkt, l.target); err == nil {
						sent.Add(1)
					}
				}
			}
		}()
	}
	time.Sleep(*warmup)
	b := snapshot(recvClient.Load() + recvServer.Load())
	time.Sleep(*duration)
	a := snapshot(recvClient.Load() + recvServer.Load())
	cancel()
	offloaded := 0
	if *mode == "traverse" {
		offloaded = countOffloaded(n)
	}
	for i := range clients {
		clients[i].conn.Close()
		servers[i].conn.Close()
	}
	wg.Wait()
	if teardown != nil {
		teardown()
	}
	fwd := a.recv - b.recv
	mp := float64(fwd) / 1e6
	out := map[string]any{
		"mode": *mode, "calls": n, "pps": *pps, "seconds": duration.Seconds(),
		"forwarded": fwd, "expected": uint64(2 * n * *pps * int(duration.Seconds())), "sent_total": sent.Load(),
		"proxy_cpu_s": a.proxy - b.proxy, "proxy_user_s": a.proxyUser - b.proxyUser, "driver_cpu_s": a.self - b.self,
		"machine_busy_s": a.busy - b.busy, "machine_softirq_s": a.softirq - b.softirq,
		"proxy_cpu_s_per_mpkt":    (a.proxy - b.proxy) / mp,
		"machine_busy_s_per_mpkt": (a.busy - b.busy) / mp,
		"offloaded_calls":         offloaded,
	}
	j, _ := json.Marshal(out)
	fmt.Println(string(j))
	return nil
}

type snap struct {
	recv                                  uint64
	proxy, proxyUser, self, busy, softirq float64
}

func snapshot(recv uint64) snap {
	s := snap{recv: recv}
	p := procstat.ReadPID(*pid)
	s.proxy, s.proxyUser = p.CPU(), p.User
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	s.self = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	m, _ := procstat.ReadMachine()
	s.busy, s.softirq = m.Busy, m.SoftIRQ
	return s
}

// traverse: one upsert per call over the control protocol; the client sends
// to the fixed port, the server to the stream's inside port.
var ctl *mediaproxy.ControlClient

func setupTraverse(clients, servers []*leg) (func(), error) {
	ap, err := netip.ParseAddrPort(*control)
	if err != nil {
		return nil, err
	}
	if err := inNS(*gwNS, func() error { ctl, err = mediaproxy.DialControl(ap); return err }); err != nil {
		return nil, err
	}
	out, in := netip.MustParseAddr(*outsideIP), netip.MustParseAddr(*insideIP)
	ctx := context.Background()
	for i := range clients {
		r, err := ctl.Do(ctx, &mediaproxy.Descriptor{Op: mediaproxy.OpUpsert, Flags: mediaproxy.FlagCallerOutside | mediaproxy.FlagSSRC,
			SSRC: clients[i].ssrc, CallID: fmt.Sprintf("bench-%d", i),
			Client: addrOf(clients[i].conn), Server: addrOf(servers[i].conn)})
		if err != nil {
			return nil, fmt.Errorf("call %d: %w", i, err)
		}
		clients[i].target = netip.AddrPortFrom(out, r.FixedRTP)
		servers[i].target = netip.AddrPortFrom(in, r.InsideRTP)
	}
	return func() {
		for i := range clients {
			_, _ = ctl.Do(ctx, &mediaproxy.Descriptor{Op: mediaproxy.OpDelete, Index: mediaproxy.AllStreams, CallID: fmt.Sprintf("bench-%d", i)})
		}
		ctl.Close()
	}, nil
}

func countOffloaded(n int) int {
	k := 0
	for i := 0; i < n; i++ {
		r, err := ctl.Do(context.Background(), &mediaproxy.Descriptor{Op: mediaproxy.OpQuery, CallID: fmt.Sprintf("bench-%d", i)})
		if err == nil && r.Offloaded {
			k++
		}
	}
	return k
}

// rtpengine: one call per client/server pair (bench/ngclient): the client
// is the offerer, the server the answerer.
func setupRtpengine(clients, servers []*leg) (func(), error) {
	ap, err := netip.ParseAddrPort(*ng)
	if err != nil {
		return nil, err
	}
	var c *ngclient.Client
	if err := inNS(*gwNS, func() error { c, err = ngclient.Dial(ap); return err }); err != nil {
		return nil, err
	}
	for i := range clients {
		id := fmt.Sprintf("bench-%d", i)
		if clients[i].target, servers[i].target, err = c.Call(id, addrOf(clients[i].conn), addrOf(servers[i].conn)); err != nil {
			return nil, err
		}
	}
	return func() {
		for i := range clients {
			_ = c.Delete(fmt.Sprintf("bench-%d", i))
		}
		c.Close()
	}, nil
}
