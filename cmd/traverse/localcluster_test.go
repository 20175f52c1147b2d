package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/loadgen"
)

// localCluster runs deploy/local-cluster.sh CMD with this test binary as
// the traverse binary and dir as its state directory.
func localCluster(ctx context.Context, dir, cmd string) (string, error) {
	c := exec.CommandContext(ctx, "bash", "../../deploy/local-cluster.sh", cmd)
	c.Env = append(os.Environ(), testMainEnv...)
	c.Env = append(c.Env, "CLUSTER_DIR="+dir, "CLUSTER_BIN="+os.Args[0], "CLUSTER_LOG_LEVEL=warn")
	out, err := c.CombinedOutput()
	return string(out), err
}

// readEnvFile reads the KEY='value' lines of endpoints.env.
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok && !strings.HasPrefix(k, "#") {
			env[k] = strings.Trim(v, "'")
		}
	}
	return env
}

// TestLocalClusterScript: deploy/local-cluster.sh up starts the whole
// topology as separate processes (3 clustered bus nodes, 3 SFU nodes, two
// signal servers, two controllers, STUN, TURN); rooms joined through each signal server get audio through it;
// status sees every process; down stops every process it started and
// nothing else.
func TestLocalClusterScript(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Fatal("bash is needed to run deploy/local-cluster.sh")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bystander := exec.Command("sleep", "60") // a process of ours the script must not stop
	if err := bystander.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = bystander.Process.Kill(); _ = bystander.Wait() }()

	start := time.Now()
	out, err := localCluster(ctx, dir, "up")
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range []string{"bus-1", "bus-2", "bus-3", "sfu-n1", "signal-1", "controller-1"} {
				b, _ := os.ReadFile(filepath.Join(dir, "logs", name+".log"))
				t.Logf("%s.log:\n%s", name, b)
			}
		}
		_, _ = localCluster(context.Background(), dir, "down")
	})
	if err != nil {
		t.Fatalf("up: %v\n%s", err, out)
	}
	t.Logf("up in %v:\n%s", time.Since(start).Round(time.Millisecond), out)
	env := readEnvFile(t, filepath.Join(dir, "endpoints.env"))
	if got := len(strings.Fields(env["SFU_NODES"])); got != 3 {
		t.Errorf("SFU_NODES %q: %d nodes, want 3", env["SFU_NODES"], got)
	}
	if got := len(strings.Split(env["NATS_URLS"], ",")); got != 3 {
		t.Errorf("NATS_URLS %q: %d servers, want 3", env["NATS_URLS"], got)
	}
	if env["CONTROLLERS"] != "2" {
		t.Errorf("CONTROLLERS=%s, want 2", env["CONTROLLERS"])
	}
	pids, _ := filepath.Glob(filepath.Join(dir, "pids", "*.pid"))
	if len(pids) != 12 {
		t.Fatalf("%d pid files, want 12 (3 bus, 3 sfu, 2 signal, 2 controllers, stun, turn): %v", len(pids), pids)
	}
	if out, err := localCluster(ctx, dir, "status"); err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}

	// Two audio rooms of two through each signal server.
	api, err := loadgen.NewAPI(false, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	for i, ws := range strings.Fields(env["SIGNAL_WS"]) {
		sum, err := loadgen.Run(ctx, api, loadgen.Config{Rooms: 2, Publishers: 2, Duration: 2 * time.Second,
			VideoBitrate: -1, RoomPrefix: "local" + strconv.Itoa(i) + "-",
			NewSignaler: func() loadgen.Signaler { return loadgen.NewWSSignaler(ws, loadgen.DemoTokens(ws)) }})
		if err != nil {
			t.Fatalf("%s: %v", ws, err)
		}
		t.Logf("%s: %d/%d connected, %.0f of %.0f pkt/s, join p50 %.0f ms", ws, sum.Connected, sum.Peers,
			sum.PacketsPerSecond, sum.ExpectedPerSecond, sum.JoinP50Millis)
		if sum.Connected != sum.Peers || sum.Peers != 4 {
			t.Errorf("%s: %d of %d connected (%s)", ws, sum.Connected, sum.Peers, sum.FirstJoinError)
		}
		if sum.ExpectedPerSecond == 0 || sum.PacketsPerSecond < 0.8*sum.ExpectedPerSecond {
			t.Errorf("%s: received %.0f pkt/s of %.0f expected", ws, sum.PacketsPerSecond, sum.ExpectedPerSecond)
		}
	}

	checkQueriedMetrics(t, ctx, env)

	var started []int
	for _, f := range pids {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.Fields(string(b))[0])
		if err != nil {
			t.Fatal(err)
		}
		started = append(started, pid)
	}
	if out, err := localCluster(ctx, dir, "down"); err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	for _, pid := range started {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
			if b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); !strings.Contains(string(b), ") Z ") {
				t.Errorf("pid %d still runs after down", pid)
			}
		}
	}
	if bystander.ProcessState != nil || bystander.Process.Signal(syscall.Signal(0)) != nil {
		t.Error("down stopped a process it did not start")
	}
	if out, err := localCluster(ctx, dir, "status"); err == nil {
		t.Errorf("status after down succeeded:\n%s", out)
	}
	t.Logf("up, two calls and down in %v", time.Since(start).Round(time.Millisecond))
}

// checkQueriedMetrics scrapes /metrics of every process the script started
// and fails for each traverse_* metric the dashboard or the alert rules
// query that no role serves.
func checkQueriedMetrics(t *testing.T, ctx context.Context, env map[string]string) {
	t.Helper()
	served := map[string]bool{}
	for k, admin := range env {
		if !strings.HasPrefix(k, "ADMIN_") {
			continue
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(body), "\n") {
			f := strings.Fields(line)
			if len(f) != 4 || f[0] != "#" || f[1] != "TYPE" {
				continue
			}
			served[f[2]] = true
			if f[3] == "histogram" || f[3] == "summary" {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					served[f[2]+suffix] = true
				}
			}
		}
	}
	metricName := regexp.MustCompile(`traverse_[a-z0-9_]+`)
	for _, file := range []string{"../../deploy/grafana/traverse.json", "../../deploy/prometheus/alerts.yml"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		names := metricName.FindAllString(string(b), -1)
		if len(names) < 10 {
			t.Errorf("%s queries only %d metrics", file, len(names))
		}
		for _, name := range names {
			if served[name] {
				continue
			}
			t.Errorf("%s queries %s, which no role serves", file, name)
		}
	}
}
