package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/rtp"

	"github.com/traverse-rtc/traverse/client/relayclient"
	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/cascade/relayauth"
	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/testkit"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

// benchEnv reads a positive integer knob of TestCascadeHopCost.
func benchEnv(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// procCPU is a process's CPU time so far: the sum of its threads' run
// time in nanoseconds (/proc/PID/task/*/schedstat, first field) where the
// kernel keeps schedstats; else user + system time from /proc/PID/stat, in
// clock ticks of 10 ms (too coarse for the slope between two fan-outs of
// 5 s phases: 10 ms over 12,000 more packets is 170 ns). A Go process's
// threads do not exit under this load, so the sum loses nothing.
func procCPU(t *testing.T, pid int) time.Duration {
	if tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid)); err == nil && len(tasks) > 0 {
		var sum int64
		ok := true
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			if err != nil {
				continue // a thread gone between the glob and the read
			}
			v, err := strconv.ParseInt(strings.Fields(string(b))[0], 10, 64)
			if err != nil {
				ok = false
				break
			}
			sum += v
		}
		if ok {
			return time.Duration(sum)
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// the command name may hold spaces: fields count from after its ')'
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// switches are a process's context switches so far, summed over its
// threads (/proc/PID/task/*/status): voluntary (a thread blocked, in a
// system call or a futex, and was woken again later: one wake-up each)
// and involuntary (the kernel took the CPU from a runnable thread).
type switches struct{ vol, invol int64 }

func procSwitches(pid int) switches {
	var s switches
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // a thread gone between the glob and the read
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "voluntary_ctxt_switches":
				s.vol += n
			case "nonvoluntary_ctxt_switches":
				s.invol += n
			}
		}
	}
	return s
}

// benchFanouts reads BENCH_FANOUTS, "LO,HI" (default 2,8): the two numbers
// of next hops / subscribers TestCascadeHopCost measures each mode at.
func benchFanouts(t *testing.T) (lo, hi int) {
	lo, hi = 2, 8
	if v := os.Getenv("BENCH_FANOUTS"); v != "" {
		a, b, ok := strings.Cut(v, ",")
		l, err1 := strconv.Atoi(a)
		h, err2 := strconv.Atoi(b)
		if !ok || err1 != nil || err2 != nil || l < 1 || h <= l || h > relaywire.MaxDst {
			t.Fatalf("BENCH_FANOUTS %q: want LO,HI with 1 <= LO < HI <= %d", v, relaywire.MaxDst)
		}
		lo, hi = l, h
	}
	return lo, hi
}

func benchEnvString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// fetchProfile writes the CPU profile of seconds the admin listener at
// addr serves (--pprof) to file.
func fetchProfile(addr string, seconds int, file string) error {
	return fetchPprof(addr, "profile", seconds, file)
}

// fetchPprof writes what the admin listener at addr serves (--pprof) under
// /debug/pprof/kind for seconds (a CPU profile, a runtime trace) to file.
func fetchPprof(addr, kind string, seconds int, file string) error {
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", addr, kind, seconds))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile: %s: %s", resp.Status, b)
	}
	return os.WriteFile(file, b, 0o644)
}

// phaseHook starts BENCH_PHASE_CMD (a sh command line), when set, as a
// phase of TestCascadeHopCost begins, with PID (the node's) and PHASE
// (the mode and fan-out, e.g. hop-x8) in its environment: for counting
// tools attached to the node, e.g. BENCH_PHASE_CMD='perf stat -e
// "syscalls:sys_enter_*" -p $PID -- sleep 3 2>/tmp/sc.$PHASE'. Such tools
// cost the node CPU: a run with one measures counts, not costs. The
// returned func waits for the command (at most 30 s).
func phaseHook(t *testing.T, pid int, phase string) func() {
	line := os.Getenv("BENCH_PHASE_CMD")
	if line == "" {
		return func() {}
	}
	c := exec.Command("sh", "-c", line)
	c.Env = append(os.Environ(), fmt.Sprintf("PID=%d", pid), "PHASE="+phase)
	c.Stdout, c.Stderr = os.Stderr, os.Stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	done := testkit.Exited(c)
	return func() {
		if _, ok := testkit.AwaitExit(c, done, 30*time.Second); !ok {
			t.Logf("BENCH_PHASE_CMD of %s did not end in 30 s: killed", phase)
		}
	}
}

// modeFigures are one mode's per-round figures, in ns of CPU, and its
// wake-ups (the node's context switches) per packet in.
type modeFigures struct {
	lo, hi []float64 // per packet out, at each fan-out
	slope  []float64 // per added output
	perIn  []float64 // fixed, per packet in
	// wLo, wHi: context switches per packet in at each fan-out (all),
	// iLo, iHi: the involuntary ones among them
	wLo, wHi, iLo, iHi []float64
}

func (f *modeFigures) add(lo, hi, slope, perIn float64, wLo, wHi, iLo, iHi float64) {
	f.lo, f.hi = append(f.lo, lo), append(f.hi, hi)
	f.slope, f.perIn = append(f.slope, slope), append(f.perIn, perIn)
	f.wLo, f.wHi = append(f.wLo, wLo), append(f.wHi, wHi)
	f.iLo, f.iHi = append(f.iLo, iLo), append(f.iHi, iHi)
}

// only keeps the rounds whose keep is true and returns how many, or keeps
// all and returns 0 when none is.
func (f *modeFigures) only(keep []bool) int {
	var g modeFigures
	for i, k := range keep {
		if k {
			g.add(f.lo[i], f.hi[i], f.slope[i], f.perIn[i], f.wLo[i], f.wHi[i], f.iLo[i], f.iHi[i])
		}
	}
	if len(g.lo) == 0 {
		return 0
	}
	*f = g
	return len(g.lo)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func percentile(v []time.Duration, p float64) time.Duration {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// TestCascadeHopCost is the cascade's node-level benchmark (issue 13): one
// real "traverse sfu" process (with its relay port and relay clients
// on), its CPU time read from /proc between phases of one run:
//
//   - hop: the test plays node A and next-hop nodes C1..CS (their relay
//     links keyed by the cluster secret, the routes pushed by the test as
//     the controller over the bus). A sends PPS relay messages a second,
//     each for all S destinations; the node forwards each once to every
//     Ci: S relay packets out per packet in.
//   - webrtc: a relay client publishes the same stream (PPS VP8 packets of
//     the same size) into a room where S pion subscribers (browser-like
//     RTCP: reports, NACKs, transport-cc) receive it over WebRTC: S
//     SRTP packets out per packet in.
//
// Cost per packet out = the node's CPU (its threads' run time, schedstat)
// over the phase / packets the receivers got. BENCH_ROUNDS rounds run
// both modes at both fan-outs; the medians and their ratios are logged. Then the latency one hop adds on loopback: A -> node
// -> C1 against A -> C1 directly, interleaved, p50 and p99.
//
// A benchmark, not a test of correctness: it runs only with
// TRAVERSE_CASCADE_BENCH=1 (bench/cascade-hop.sh; knobs BENCH_PPS,
// BENCH_FANOUTS "LO,HI", BENCH_SECONDS, BENCH_ROUNDS). Each mode runs at
// both fan-outs; the slope between them is the cost of one more next hop
// or subscriber per packet out, the rest the fixed cost per packet in.
func TestCascadeHopCost(t *testing.T) {
	if os.Getenv("TRAVERSE_CASCADE_BENCH") != "1" {
		t.Skip("a benchmark loading a node for about a minute: run bench/cascade-hop.sh (TRAVERSE_CASCADE_BENCH=1)")
	}
	pps := benchEnv("BENCH_PPS", 2000)
	lo, hi := benchFanouts(t)
	subs := hi
	dur := time.Duration(benchEnv("BENCH_SECONDS", 5)) * time.Second
	rounds := benchEnv("BENCH_ROUNDS", 3)
	// tracks: the input is this many publishers' tracks, round robin (a
	// cascade-shaped load: the relay link carries every track between two
	// nodes); pps is the total
	tracks := benchEnv("BENCH_TRACKS", 1)
	const size = 1000

	base := testkit.FreePorts(t, 8, netip.MustParseAddr("127.0.0.1"))
	port := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", base+i) }
	creds := filepath.Join(t.TempDir(), "creds")
	b := startChild(t, "bus", "--listen", port(0), "--creds-dir", creds, "--jetstream-dir", t.TempDir(), "--admin", port(1),
		"--node", "a", "--log-level", "warn")
	waitReady(t, port(1), 30*time.Second, b.exited, b.output)
	secret := bytes.Repeat([]byte("s"), 40)
	secretFile := filepath.Join(t.TempDir(), "cascade.secret")
	if err := os.WriteFile(secretFile, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	const tokenKey = "0123456789abcdef-bench"
	const nodeID = 100
	sfuAdmin := port(4)
	args := []string{"sfu", "--nats", "nats://" + port(0), "--nats-creds", filepath.Join(creds, "sfu-a.creds"),
		"--udp", port(2), "--tcp", port(3), "--admin", sfuAdmin, "--cascade-listen", port(5), "--cascade-secret-file", secretFile,
		"--cascade-token-key", tokenKey, "--cascade-id", strconv.Itoa(nodeID), "--log-level", "warn"}
	profile := os.Getenv("BENCH_PROFILE") // a file: the node's CPU profile of the last round's phase (hop or webrtc, x HI)
	// BENCH_LAT_TRACE (a file): the node's runtime trace of the latency
	// phase's first BENCH_LAT_TRACE_SECONDS (default 8), for go tool trace
	latTrace := os.Getenv("BENCH_LAT_TRACE")
	if profile != "" || latTrace != "" {
		args = append(args, "--pprof")
	}
	// BENCH_NODE_ENV: VAR=VALUE settings (space separated) for the node
	// alone, e.g. GOMAXPROCS=1 (env execs the node in place: its PID is
	// the node's); BENCH_NODE_ARGS: more flags for it, e.g.
	// --scheduler-poll=false
	var wrap []string
	if v := strings.Fields(os.Getenv("BENCH_NODE_ENV")); len(v) > 0 {
		wrap = append([]string{"env"}, v...)
		t.Logf("SUMMARY the node runs with %s", strings.Join(v, " "))
	}
	if v := strings.Fields(os.Getenv("BENCH_NODE_ARGS")); len(v) > 0 {
		args = append(args, v...)
		t.Logf("SUMMARY the node runs with flags %s", strings.Join(v, " "))
	}
	n := startChildIn(t, wrap, args...)
	waitReady(t, sfuAdmin, 30*time.Second, n.exited, n.output)
	pid := n.cmd.Process.Pid
	relayPort := netip.MustParseAddrPort(port(5))

	// the test's nodes: A sends, C1..CS receive. Their sockets coalesce
	// as a relay endpoint's do (udpio.Options.Coalesce): A can send a
	// burst as one UDP GSO run per destination, the Cs read a run as one
	// read (UDP GRO), so the node's sends to them cost what sends to
	// real next hops cost
	listenCoalescing := func() *udpio.Conn {
		c, err := udpio.Listen(context.Background(), "udp4", "127.0.0.1:0", udpio.Options{Coalesce: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	addrOf := func(c *udpio.Conn) string { return c.LocalAddr().String() }
	const idA = 1
	aConn := listenCoalescing()
	aLink, err := relaywire.NewLink(secret, idA, nodeID, 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := bus.CascadeCommand{Node: "a", Controller: "bench", Lease: 1, Gen: 1, Time: time.Now().UTC(),
		Peers: []bus.CascadePeer{{ID: idA, Addr: addrOf(aConn)}}, Routes: []bus.CascadeHop{{Dst: idA, Via: idA}}}
	var got atomic.Int64 // relay packets the Cs received
	var latMu sync.Mutex
	var hopLat []time.Duration
	var dsts []relaywire.NodeID
	for i := range subs {
		id := uint32(10 + i)
		c := listenCoalescing()
		cmd.Peers = append(cmd.Peers, bus.CascadePeer{ID: id, Addr: addrOf(c)})
		cmd.Routes = append(cmd.Routes, bus.CascadeHop{Dst: id, Via: id})
		dsts = append(dsts, relaywire.NodeID(id))
		l, err := relaywire.NewLink(secret, relaywire.NodeID(id), nodeID, 0)
		if err != nil {
			t.Fatal(err)
		}
		go func(first bool) {
			in := udpio.NewMessages(8, udpio.MaxCoalesced)
			var h relaywire.Header
			for {
				k, err := c.ReadBatch(in)
				if err != nil {
					return
				}
				now := time.Now().UnixNano()
				for j := range in[:k] {
					for f, off := in[j].Datagram(0); len(f) > 0; f, off = in[j].Datagram(off) {
						got.Add(1)
						if !first {
							continue
						}
						lh, body, err := l.Open(f)
						if err != nil || lh.Type != relaywire.TypeData {
							continue
						}
						if _, msg, err := relaywire.ParseData(body); err == nil {
							if p, err := relaywire.ParseHeader(msg, &h); err == nil && len(p) >= 8 {
								latMu.Lock()
								hopLat = append(hopLat, time.Duration(now-int64(binary.BigEndian.Uint64(p))))
								latMu.Unlock()
							}
						}
					}
				}
			}
		}(i == 0)
	}
	// the latency phase's receivers (cascadelat_test.go): L, a next hop
	// of its own, and D, reached by A directly; both stamp arrivals
	// With peers (BENCH_LAT_PEERS), latN samples per path, round robin:
	// sample i goes through path i mod the number of paths
	latN := benchEnv("BENCH_LAT_SAMPLES", 20000)
	latPeers := latPeerNames(t)
	latTotal := latN * (1 + len(latPeers))
	latHop, latDir := newLatSamples(latTotal), newLatSamples(latTotal)
	const idL = 9
	lConn, dConn := listenStamped(t), listenStamped(t)
	cmd.Peers = append(cmd.Peers, bus.CascadePeer{ID: idL, Addr: lConn.LocalAddr().String()})
	cmd.Routes = append(cmd.Routes, bus.CascadeHop{Dst: idL, Via: idL})
	lLink, err := relaywire.NewLink(secret, idL, nodeID, 0)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf, oob := make([]byte, 2048), make([]byte, 128)
		var h relaywire.Header
		for {
			k, kt, ut, err := readStamped(lConn, buf, oob)
			if err != nil {
				return
			}
			lh, body, err := lLink.Open(buf[:k])
			if err != nil || lh.Type != relaywire.TypeData {
				continue
			}
			if _, msg, err := relaywire.ParseData(body); err == nil {
				if p, err := relaywire.ParseHeader(msg, &h); err == nil && len(p) >= 12 {
					latHop.put(binary.BigEndian.Uint32(p[8:]), int64(binary.BigEndian.Uint64(p)), kt, ut)
				}
			}
		}
	}()
	go recvStamped(dConn, 0, latDir, nil)
	ctl, err := bus.Connect(bus.Config{URLs: []string{"nats://" + port(0)}, Name: "bench controller", CredsFile: filepath.Join(creds, "controller.creds")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	if err := ctl.PublishCascadeCommand(cmd); err != nil {
		t.Fatal(err)
	}

	var linkSeq uint32
	latIdx := uint32(latTotal) // the latency phase's sample index (latTotal: none)
	payload := make([]byte, size)
	frame := make([]byte, 0, 2048)
	trackNames := make([][]byte, tracks)
	for i := range trackNames {
		trackNames[i] = fmt.Appendf(nil, "t%03d", i)
	}
	hopTrack := 0
	// A's burst, sent by flushHop as one WriteBatch (one UDP GSO run to
	// the node, as an upstream relay endpoint's batch leaves)
	burst := udpio.NewMessages(udpio.DefaultBatch, 0)
	nBurst := 0
	flushHop := func() {
		if nBurst > 0 {
			_, _ = aConn.WriteBatch(burst[:nBurst])
			nBurst = 0
		}
	}
	// sealHop seals A's next message for to (the next track's) into m
	sealHop := func(to []relaywire.NodeID, m *udpio.Message) {
		h := relaywire.Header{Kind: relaywire.KindMedia, HopLimit: 8, Source: idA, NDst: uint8(len(to)),
			Room: []byte("bench"), Publisher: []byte("p"), Track: trackNames[hopTrack]}
		hopTrack = (hopTrack + 1) % tracks
		copy(h.Dst[:], to)
		binary.BigEndian.PutUint64(payload, uint64(time.Now().UnixNano()))
		binary.BigEndian.PutUint32(payload[8:], latIdx)
		msg, _ := relaywire.AppendHeader(frame[:0], &h)
		msg = append(msg, payload...)
		linkSeq++
		body := relaywire.AppendData(nil, linkSeq, msg)
		m.N = len(aLink.Seal(m.Buf[:0], relaywire.TypeData, body))
		m.Addr = relayPort
	}
	// sendHop sends one message as its own datagram
	var one [1]udpio.Message
	one[0].Buf = make([]byte, 2048)
	sendHop := func(to []relaywire.NodeID) {
		sealHop(to, &one[0])
		_ = aConn.WriteTo(one[0].Payload(), relayPort)
	}
	// queueHop adds one message to A's burst
	queueHop := func(to []relaywire.NodeID) {
		if nBurst == len(burst) {
			flushHop()
		}
		sealHop(to, &burst[nBurst])
		nBurst++
	}
	testkit.WaitFor(t, 15*time.Second, "the node forwarding by the pushed routes", func() bool {
		_ = ctl.PublishCascadeCommand(cmd)
		sendHop(dsts[:1])
		return testkit.Eventually(300*time.Millisecond, func() bool { return got.Load() > 0 })
	})

	// latency: A -> node -> L against A -> D directly, one of each per
	// BENCH_LAT_GAP_US (default 500 us), the node otherwise idle; with
	// peers, the paths take turns: each sample goes through one of them
	// (the node, then each peer, the order turning each round) and
	// straight to D, one pair per gap
	latency := func() {
		gap := time.Duration(benchEnv("BENCH_LAT_GAP_US", 500)) * time.Microsecond
		dAddr := dConn.LocalAddr().(*net.UDPAddr).AddrPort()
		paths := []latPath{{name: "traverse hop", got: latHop, send: func(idx uint32) {
			latIdx = idx
			sendHop([]relaywire.NodeID{idL})
		}}}
		latIdx = uint32(latTotal) // no sample: a warm-up, and the hop's relay frame's length
		sendHop([]relaywire.NodeID{idL})
		frameLen := one[0].N // the peers' datagrams are as long
		for _, name := range latPeers {
			paths = append(paths, startLatPeer(t, name, frameLen, latTotal))
		}
		ts := make([]byte, 12)
		load0 := loadAvg()
		var traced chan error
		if latTrace != "" {
			traced = make(chan error, 1)
			go func() { traced <- fetchPprof(sfuAdmin, "trace", benchEnv("BENCH_LAT_TRACE_SECONDS", 8), latTrace) }()
		}
		start := time.Now()
		for i := range latTotal {
			// with three paths or more, each round's order is the last
			// one's turned by one, so that no path always follows the
			// same one (with two, the turn would send one twice in a row)
			k := i % len(paths)
			if len(paths) > 2 {
				k = (i + i/len(paths)) % len(paths)
			}
			paths[k].send(uint32(i))
			binary.BigEndian.PutUint64(ts, uint64(time.Now().UnixNano()))
			binary.BigEndian.PutUint32(ts[8:], uint32(i))
			_ = aConn.WriteTo(ts, dAddr)
			time.Sleep(gap)
		}
		latIdx = uint32(latTotal)
		took := time.Since(start)
		if traced != nil {
			if err := <-traced; err != nil {
				t.Errorf("the node's trace: %v", err)
			} else {
				t.Logf("SUMMARY the node's runtime trace of the latency phase's first %d s: %s (go tool trace)", benchEnv("BENCH_LAT_TRACE_SECONDS", 8), latTrace)
			}
		}
		time.Sleep(200 * time.Millisecond)
		load1 := loadAvg()
		added := make([]quantiles, len(paths))
		per := func() time.Duration { return (took / time.Duration(latN)).Round(time.Microsecond) }
		for k, p := range paths {
			rep, q, err := latReport(p.got, latDir, latN*9/10)
			if err != nil {
				t.Fatalf("%s: %v", p.name, err)
			}
			added[k] = q
			if k == 0 {
				// per: the mean time between two samples of one path, as
				// slept (a short sleep lasts longer than asked)
				t.Logf("SUMMARY latency per hop, node idle (%d sent over %v, one per %v, paths %d; load average %s before, %s after): %s (goal: added p99 < 200us)",
					latN, took.Round(time.Millisecond), per(), len(paths), load0, load1, rep)
				continue
			}
			t.Logf("SUMMARY latency through %s, the same run (%d sent, one per %v, taking turns with the hop): %s", p.name, latN, per(), rep)
		}
		for k := 1; k < len(paths); k++ {
			r := func(a, b time.Duration) string {
				if b <= 0 {
					return "-"
				}
				return fmt.Sprintf("%.2f", float64(a)/float64(b))
			}
			t.Logf("SUMMARY added latency, traverse hop / %s: p50 %s, p99 %s, p999 %s (%v against %v)", paths[k].name,
				r(added[0].p50, added[k].p50), r(added[0].p99, added[k].p99), r(added[0].p999, added[k].p999), added[0], added[k])
		}
	}
	if os.Getenv("BENCH_LATENCY_ONLY") == "1" {
		latency()
		return
	}

	// WebRTC: two rooms, "bench-lo" with lo subscribers and "bench-hi" with
	// hi, each with its relay client publishing; both sets stay connected
	// through every phase, so their idle cost (RTCP) is in every figure
	sigCl, err := bus.Connect(bus.Config{URLs: []string{"nats://" + port(0)}, Name: "bench signal", RequestTimeout: 30 * time.Second,
		CredsFile: filepath.Join(creds, "signal.creds")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sigCl.Close()
	api, err := loadgen.NewAPI(false, netip.Addr{}, loadgen.WithFeedback(true))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var viewers []*loadgen.Client
	// rcs[room][track]: the publishers of each room, one relay client per
	// track (10 publishers, as a cascade link between two nodes carries)
	var rcs [][]*relayclient.Client
	const perClient = 1
	for ri, room := range []struct {
		name string
		n    int
	}{{"bench-lo", lo}, {"bench-hi", hi}} {
		for i := range room.n {
			v, err := loadgen.Dial(ctx, api, loadgen.NewBusSignaler(sigCl, "a"), loadgen.ClientConfig{Room: room.name, Identity: fmt.Sprintf("v%d", i), Subscribe: true})
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			viewers = append(viewers, v)
		}
		var pubs []*relayclient.Client
		for first := 0; first < tracks; first += perClient {
			tok, sec, err := relayauth.Mint([]byte(tokenKey), signal.Claims{Room: room.name, Identity: fmt.Sprintf("ingest%d", first),
				Publish: true, Expires: time.Now().Add(time.Hour).Unix()})
			if err != nil {
				t.Fatal(err)
			}
			var trs []relayclient.Track
			for i := first; i < min(tracks, first+perClient); i++ {
				trs = append(trs, relayclient.Track{ID: fmt.Sprintf("cam%03d", i), Video: true, MimeType: "video/VP8", ClockRate: 90000})
			}
			rc, err := relayclient.Dial(ctx, relayclient.Config{Server: relayPort, Token: tok, Secret: sec, Room: room.name,
				// each client from its own loopback address: the relay port
				// limits client frames per source address (5,000 a second)
				Local: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(1 + ri), byte(1 + first/perClient)}), 0), Tracks: trs})
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			pubs = append(pubs, rc)
		}
		rcs = append(rcs, pubs)
	}
	rtpSeq := make([]uint16, tracks)
	rtpTrack := map[*relayclient.Client]int{} // each room's next track, by its first publisher
	vp8 := make([]byte, size-12)
	vp8[0] = 0x10 // VP8 descriptor: start of partition 0; vp8[1] bit 0 clear: every packet a keyframe
	pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SSRC: 4242, Marker: true}, Payload: vp8}
	rtpBuf := make([]byte, 0, 2048)
	// sendRTPTo publishes the next track's next packet (round robin)
	sendRTPTo := func(room []*relayclient.Client) {
		tr := rtpTrack[room[0]]
		rtpTrack[room[0]] = (tr + 1) % tracks
		rtpSeq[tr]++
		pkt.SSRC = 4242 + uint32(tr)
		pkt.SequenceNumber, pkt.Timestamp = rtpSeq[tr], uint32(rtpSeq[tr])*3000
		b, err := pkt.Header.MarshalTo(rtpBuf[:cap(rtpBuf)])
		if err != nil {
			return
		}
		_ = room[tr/perClient].WriteRTP(uint8(tr%perClient), 0, append(rtpBuf[:b], vp8...))
	}
	sendRTP := func() {
		for _, room := range rcs {
			sendRTPTo(room)
		}
	}
	viewersGot := func() uint64 {
		var s uint64
		for _, v := range viewers {
			for _, tr := range v.Tracks() {
				s += tr.Packets()
			}
		}
		return s
	}
	testkit.WaitFor(t, 30*time.Second, "every viewer receiving the relay client's video", func() bool {
		for range 20 * tracks {
			sendRTP()
		}
		for _, v := range viewers {
			if len(v.Tracks()) < tracks {
				return false
			}
			for _, tr := range v.Tracks() {
				if tr.Packets() < 10 {
					return false
				}
			}
		}
		return true
	})
	forwardedMetric := func() float64 {
		f, _ := strconv.ParseFloat(metricValue(sfuAdmin, "traverse_sfu_rtp_forwarded_total"), 64)
		return f
	}

	// pace calls send pps times a second for dur, then flush after each
	// burst (the packets due since the last wake-up)
	pace := func(send, flush func()) {
		start := time.Now()
		sent := 0
		for time.Since(start) < dur {
			due := int(time.Since(start).Seconds() * float64(pps))
			for ; sent < due; sent++ {
				send()
			}
			flush()
			time.Sleep(500 * time.Microsecond)
		}
	}
	// measure runs one phase: the node's CPU over it per packet out
	// lat is the latency A's seal -> C1's read over the phase (hop modes)
	// settle waits (up to 15 s) until the node is all but idle: under 5 %
	// of a core over 300 ms. The webrtc rooms' viewers NACK what a busy
	// phase (or the setup's bursts) lost for a while after, and the
	// node's resends of it would be charged to the next phase, whatever
	// its mode (a profile of a hop phase found 30 % of its CPU there).
	unsettled := 0
	settle := func() {
		if !testkit.Eventually(15*time.Second, func() bool {
			c0 := procCPU(t, pid)
			time.Sleep(300 * time.Millisecond)
			return procCPU(t, pid)-c0 < 15*time.Millisecond
		}) {
			unsettled++
		}
	}
	// began, when not nil, is called once the node settled, as the
	// phase begins (the profile must not cover the settle wait)
	// resent: the packets the SFU retransmitted to webrtc viewers over the
	// phase (their NACKs: in a hop phase, background charged to the hop)
	resent := func() float64 {
		f, _ := strconv.ParseFloat(metricValue(sfuAdmin, "traverse_sfu_nacks_answered_total"), 64)
		return f
	}
	// sw: the node's context switches over the phase
	measure := func(name string, send, flush func(), out func() float64, began func()) (nsPerPkt float64, pkts float64, lat []time.Duration, resends float64, sw switches) {
		settle()
		if began != nil {
			began()
		}
		hook := phaseHook(t, pid, name)
		latMu.Lock()
		hopLat = hopLat[:0]
		latMu.Unlock()
		r0, o0, c0, s0 := resent(), out(), procCPU(t, pid), procSwitches(pid)
		pace(send, flush)
		time.Sleep(300 * time.Millisecond) // what is in flight arrives
		o1, c1, r1, s1 := out(), procCPU(t, pid), resent(), procSwitches(pid)
		hook()
		latMu.Lock()
		lat = slices.Clone(hopLat)
		latMu.Unlock()
		pkts = o1 - o0
		if pkts <= 0 {
			t.Fatal("no packets out")
		}
		return float64(c1-c0) / pkts, pkts, lat, r1 - r0, switches{s1.vol - s0.vol, s1.invol - s0.invol}
	}
	// per round and mode: the average at each fan-out, and the slope
	// (the CPU one more destination adds per packet out) between them
	modes := []struct {
		name     string
		lo, hi   func()
		flush    func()
		out      func() float64
		fullName string
	}{
		// hop: each of A's messages arrives as its own datagram, as the
		// webrtc mode's publisher's do
		{"hop", func() { sendHop(dsts[:lo]) }, func() { sendHop(dsts[:hi]) }, func() {}, func() float64 { return float64(got.Load()) }, "relay"},
		// hop-batch: each burst of A's arrives as one run, as an upstream
		// relay endpoint sends it (the cascade's own shape)
		{"hop-batch", func() { queueHop(dsts[:lo]) }, func() { queueHop(dsts[:hi]) }, flushHop, func() float64 { return float64(got.Load()) }, "relay"},
		{"webrtc", func() { sendRTPTo(rcs[0]) }, func() { sendRTPTo(rcs[1]) }, func() {}, forwardedMetric, "SRTP"},
	}
	const webrtc = 2 // modes[webrtc]
	fig := make([]modeFigures, len(modes))
	// loadLat: per hop mode, A's seal -> C1's read during the phases at
	// lo and hi (all rounds)
	loadLat := make([][2][]time.Duration, len(modes))
	// full: every phase of the round got at least 95 % of the packets due
	// out (a phase that lost some, on a loaded machine, counts the CPU of
	// packets in for fewer packets out): the medians are of those rounds
	var full []bool
	due := func(fan int) float64 { return 0.95 * float64(pps*fan) * dur.Seconds() }
	for r := range rounds {
		var line []string
		whole := true
		for m, mode := range modes {
			nsLo, pLo, latLo, rsLo, swLo := measure(fmt.Sprintf("%s-x%d", mode.name, lo), mode.lo, mode.flush, mode.out, nil)
			var prof chan error
			var began func()
			// the last round: the first is often still busy with what the
			// set-up's bursts left (the webrtc viewers' NACKs)
			if r == rounds-1 && profile != "" && mode.name == benchEnvString("BENCH_PROFILE_MODE", "hop") {
				prof = make(chan error, 1)
				began = func() { go func() { prof <- fetchProfile(sfuAdmin, max(1, int(dur.Seconds())-1), profile) }() }
			}
			nsHi, pHi, latHi, rsHi, swHi := measure(fmt.Sprintf("%s-x%d", mode.name, hi), mode.hi, mode.flush, mode.out, began)
			if m != webrtc && len(latLo) > 0 && len(latHi) > 0 {
				loadLat[m][0] = append(loadLat[m][0], latLo...)
				loadLat[m][1] = append(loadLat[m][1], latHi...)
			}
			if prof != nil {
				if err := <-prof; err != nil {
					t.Fatal(err)
				}
				t.Logf("SUMMARY profile of the node, %s x%d: %s", mode.name, hi, profile)
			}
			slope := (nsHi*pHi - nsLo*pLo) / (pHi - pLo)
			perIn := (nsLo*pLo - slope*pLo) / (float64(pps) * dur.Seconds())
			in := float64(pps) * dur.Seconds()
			fig[m].add(nsLo, nsHi, slope, perIn, float64(swLo.vol+swLo.invol)/in, float64(swHi.vol+swHi.invol)/in,
				float64(swLo.invol)/in, float64(swHi.invol)/in)
			whole = whole && pLo >= due(lo) && pHi >= due(hi)
			line = append(line, fmt.Sprintf("%s x%d %.0f ns/%s out (%.0f/s), x%d %.0f ns (%.0f/s), slope %.0f ns per added output, fixed %.0f ns per packet in, wake-ups per packet in x%d %.2f (%.2f involuntary) x%d %.2f (%.2f), webrtc resends x%d %.0f x%d %.0f",
				mode.name, lo, nsLo, mode.fullName, pLo/dur.Seconds(), hi, nsHi, pHi/dur.Seconds(), slope, perIn,
				lo, fig[m].wLo[r], fig[m].iLo[r], hi, fig[m].wHi[r], fig[m].iHi[r], lo, rsLo, hi, rsHi))
		}
		full = append(full, whole)
		for m := range webrtc {
			line = append(line, fmt.Sprintf("%s/webrtc avg ratio x%d %.2f x%d %.2f, slope ratio %.2f", modes[m].name,
				lo, fig[m].lo[r]/fig[webrtc].lo[r], hi, fig[m].hi[r]/fig[webrtc].hi[r], fig[m].slope[r]/fig[webrtc].slope[r]))
		}
		t.Logf("round %d: %s%s", r+1, strings.Join(line, "; "),
			map[bool]string{true: "", false: " (SHORT: a phase got under 95 % of its packets out)"}[whole])
	}
	nFull := 0
	for m := range fig {
		if k := fig[m].only(full); k > 0 {
			nFull = k
		}
	}
	if v := viewersGot(); v == 0 {
		t.Fatal("the viewers received nothing")
	}

	if unsettled > 0 {
		t.Logf("SUMMARY %d phases began with the node still busy (over 5 %% of a core 15 s after the previous phase)", unsettled)
	}
	t.Logf("SUMMARY pps=%d tracks=%d fan-outs (next hops / subscribers)=%d,%d seconds=%v rounds=%d size=%d", pps, tracks, lo, hi, dur.Seconds(), rounds, size)
	if nFull > 0 {
		t.Logf("SUMMARY medians of the %d of %d rounds whose every phase got >= 95 %% of its packets out", nFull, rounds)
	} else {
		t.Logf("SUMMARY no round got >= 95 %% of its packets out in every phase: medians of all %d rounds (the machine is too loaded)", rounds)
	}
	for m, mode := range modes {
		f := &fig[m]
		t.Logf("SUMMARY %s: median ns CPU per packet out x%d %.0f (%.0f per CPU-second), x%d %.0f (%.0f per CPU-second); slope %.0f ns per added output; fixed %.0f ns per packet in; wake-ups (context switches) per packet in x%d %.2f (%.2f involuntary), x%d %.2f (%.2f)",
			mode.name, lo, median(f.lo), 1e9/median(f.lo), hi, median(f.hi), 1e9/median(f.hi), median(f.slope), median(f.perIn),
			lo, median(f.wLo), median(f.iLo), hi, median(f.wHi), median(f.iHi))
	}
	w := &fig[webrtc]
	for m := range webrtc {
		f := &fig[m]
		t.Logf("SUMMARY ratio %s/webrtc, average per packet out: x%d %.2f, x%d %.2f (goal <= 0.5)",
			modes[m].name, lo, median(f.lo)/median(w.lo), hi, median(f.hi)/median(w.hi))
		t.Logf("SUMMARY ratio %s/webrtc, marginal (slope, per added output): %.2f (goal <= 0.5); fixed per packet in: %.2f",
			modes[m].name, median(f.slope)/median(w.slope), median(f.perIn)/median(w.perIn))
	}
	for m := range webrtc {
		if len(loadLat[m][0]) > 0 && len(loadLat[m][1]) > 0 {
			t.Logf("SUMMARY latency under the load, %s: A's seal -> C1's read x%d p50 %v p99 %v, x%d p50 %v p99 %v (the direct path's, unloaded, below)",
				modes[m].name, lo, percentile(loadLat[m][0], 0.5), percentile(loadLat[m][0], 0.99),
				hi, percentile(loadLat[m][1], 0.5), percentile(loadLat[m][1], 0.99))
		}
	}
	latency()
}
