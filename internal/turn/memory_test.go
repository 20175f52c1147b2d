package turn

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

// TestIdleAllocationMemory opens many idle allocations (10,000 unless
// TRAVERSE_TURN_ALLOCS says) from a helper process and reports the
// server's memory per allocation: Go heap and stacks in use, and resident
// set size. The goal is under 8 KiB each. TRAVERSE_TURN_TRANSPORT=tcp
// makes each allocation over a TCP connection of its own instead (a
// connection served by the event loop: no goroutine, no buffer).
func TestIdleAllocationMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 10,000 allocations")
	}
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("TRAVERSE_TURN_ALLOCS")); err == nil && v > 0 {
		n = v
	}
	lo, hi := uint16(10000), uint16(31999) // below the ephemeral range the clients use
	if v := os.Getenv("TRAVERSE_TURN_PORTS"); v != "" {
		// A smaller range makes allocations share relay sockets.
		a, b, _ := strings.Cut(v, "-")
		l, _ := strconv.Atoi(a)
		h, _ := strconv.Atoi(b)
		lo, hi = uint16(l), uint16(h)
	}
	s, _ := newTestServer(t, func(c *Config) {
		c.RelayPortLow, c.RelayPortHigh = lo, hi
		c.AuthFailuresPerMinute = -1
		// One user from one address: no quotas.
		c.MaxAllocations, c.MaxAllocationsPerUser, c.AllocationRate, c.MaxStreamConnsPerSource, c.UnauthAnswerRate = -1, -1, -1, -1, -1
	})
	heap0, rss0 := memNow()

	addr := s.Addr()
	if os.Getenv("TRAVERSE_TURN_TRANSPORT") == "tcp" {
		addr = s.TCPAddr()
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAllocClients$")
	cmd.Env = append(os.Environ(), "TRAVERSE_TURN_HELPER="+addr.String(), "TRAVERSE_TURN_ALLOCS="+strconv.Itoa(n))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(stdout)
	ready := false
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "ready") {
			ready = true
			break
		}
	}
	if !ready {
		t.Fatal("helper did not finish allocating")
	}
	if got := s.Allocations(); got != n {
		t.Fatalf("allocations = %d, want %d", got, n)
	}
	heap1, rss1 := memNow()
	perHeap := float64(heap1-heap0) / float64(n)
	perRSS := float64(rss1-rss0) / float64(n)
	s.mu.RLock()
	socks := len(s.byFD)
	s.mu.RUnlock()
	t.Logf("%d idle allocations on %d relay sockets: heap+stacks %.0f B each, RSS %.0f B each", n, socks, perHeap, perRSS)
	if perHeap > 8192 {
		t.Errorf("heap per idle allocation %.0f B, goal < 8 KiB", perHeap)
	}
}

func memNow() (heap, rss int64) {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			rss = kb * 1024
		}
	}
	return int64(ms.HeapInuse + ms.StackInuse), rss
}

// TestHelperAllocClients is the helper process of TestIdleAllocationMemory.
func TestHelperAllocClients(t *testing.T) {
	addr := os.Getenv("TRAVERSE_TURN_HELPER")
	if addr == "" {
		t.Skip("helper process only")
	}
	n, _ := strconv.Atoi(os.Getenv("TRAVERSE_TURN_ALLOCS"))
	server := netip.MustParseAddrPort(addr)
	clients := make([]*stunClient, n)
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	const workers = 8
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				dial := newSTUNClient
				if os.Getenv("TRAVERSE_TURN_TRANSPORT") == "tcp" {
					dial = newTCPSTUNClient
				}
				c := dial(t, server, testUser, testPass)
				clients[i] = c
				var resp *stun.Message
				for try := 0; try < 5; try++ {
					resp = c.do(stun.MethodAllocate, requestedUDP(), lifetimeSetter(time.Hour))
					if errCode(resp) != 437 { // a lost answer retried
						break
					}
				}
				if code := errCode(resp); code != 0 {
					select {
					case errs <- fmt.Sprintf("allocation %d: code %d", i, code):
					default:
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case e := <-errs:
		t.Fatal(e)
	default:
	}
	fmt.Println("ready")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
}
