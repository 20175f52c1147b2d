package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/loadgen"
)

// The failover lab (docs/failover.md): the platform as separate
// processes of this very binary on loopback, "traverse bus", SFU nodes
// n1 and n2, one or more "traverse signal", and pion participants of
// internal/loadgen in this process; one round kills (SIGKILL) the node
// that holds the call and measures how long until every participant
// receives media again. "traverse lab failover" repeats it; the tests of
// cmd/traverse run one round.

// failoverTokenKey signs the lab's tokens; every signal process of the
// lab shares it, so that a token of one is good at the others.
const failoverTokenKey = "failover-lab-token-key-0123456789"

// failoverLab is a running lab.
type failoverLab struct {
	exe   string
	env   []string
	dir   string
	log   io.Writer
	bus   string // nats:// URL
	procs map[string]*labProc
	// signals are the signal processes' HTTP addresses, by name.
	signals map[string]string
}

// labProc is one child process.
type labProc struct {
	name   string
	args   []string
	admin  string
	cmd    *exec.Cmd
	exited chan error
}

// freeLoopbackPort returns a TCP port free on 127.0.0.1 now.
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func freeLoopbackAddr() (string, error) {
	p, err := freeLoopbackPort()
	return fmt.Sprintf("127.0.0.1:%d", p), err
}

// startFailoverLab starts the bus, nodes n1 and n2 and the named signal
// processes, each ready (/readyz 200) before it returns. exe is this
// binary (a test binary re-runs itself as traverse with env).
func startFailoverLab(ctx context.Context, exe string, env []string, dir string, log io.Writer, signals ...string) (*failoverLab, error) {
	l := &failoverLab{exe: exe, env: env, dir: dir, log: log, procs: map[string]*labProc{}, signals: map[string]string{}}
	busAddr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	l.bus = "nats://" + busAddr
	if err := l.start(ctx, "bus", "bus", "--listen", busAddr, "--creds-dir", filepath.Join(dir, "creds"), "--node", "n1", "--node", "n2"); err != nil {
		l.Close()
		return nil, err
	}
	for _, n := range []string{"n1", "n2"} {
		if err := l.startNode(ctx, n); err != nil {
			l.Close()
			return nil, err
		}
	}
	for _, s := range signals {
		if err := l.startSignal(ctx, s); err != nil {
			l.Close()
			return nil, err
		}
	}
	return l, nil
}

func (l *failoverLab) creds(name string) string { return filepath.Join(l.dir, "creds", name+".creds") }

// startNode starts (or restarts) SFU node n.
func (l *failoverLab) startNode(ctx context.Context, n string) error {
	return l.start(ctx, n, "sfu", "--udp", "127.0.0.1:0", "--tcp", "", "--nats", l.bus, "--nats-creds", l.creds("sfu-"+n),
		"--drain-period", "1s")
}

// startSignal starts signal process name.
func (l *failoverLab) startSignal(ctx context.Context, name string) error {
	httpAddr, err := freeLoopbackAddr()
	if err != nil {
		return err
	}
	if err := l.start(ctx, name, "signal", "--http", httpAddr, "--nats", l.bus, "--nats-creds", l.creds("signal"),
		"--token-key", failoverTokenKey, "--demo-tokens", "--no-web"); err != nil {
		return err
	}
	l.signals[name] = httpAddr
	return nil
}

// start runs "traverse ARGS --admin ADDR" as process name and waits for
// its /readyz.
func (l *failoverLab) start(ctx context.Context, name string, args ...string) error {
	admin, err := freeLoopbackAddr()
	if err != nil {
		return err
	}
	args = append(args, "--admin", admin, "--log-level", "warn")
	out, err := os.OpenFile(filepath.Join(l.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.Command(l.exe, args...)
	cmd.Env = append(os.Environ(), l.env...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("lab: start %s: %w", name, err)
	}
	p := &labProc{name: name, args: args, admin: admin, cmd: cmd, exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait() }()
	l.procs[name] = p
	return l.waitReady(ctx, p, true, 20*time.Second)
}

// waitReady polls p's /readyz until it answers 200 (ready) or anything
// else (not ready), within d.
func (l *failoverLab) waitReady(ctx context.Context, p *labProc, ready bool, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		code, err := httpStatus(ctx, "http://"+p.admin+"/readyz")
		if err == nil && (code == http.StatusOK) == ready {
			return nil
		}
		select {
		case err := <-p.exited:
			p.exited <- err
			return fmt.Errorf("lab: %s exited (%v) before /readyz was %v; log %s", p.name, err, ready, l.tail(p.name))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: %s: /readyz not %v after %v (%d %v); log %s", p.name, ready, d, code, err, l.tail(p.name))
		}
	}
}

func httpStatus(ctx context.Context, url string) (int, error) {
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// tail is the end of name's log.
func (l *failoverLab) tail(name string) string {
	b, _ := os.ReadFile(filepath.Join(l.dir, name+".log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\n" + string(b)
}

// kill sends SIGKILL to process name and reaps it.
func (l *failoverLab) kill(name string) error {
	p := l.procs[name]
	if p == nil {
		return fmt.Errorf("lab: no process %s", name)
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("lab: %s survived SIGKILL", name)
	}
	delete(l.procs, name)
	return nil
}

// Close stops every process: SIGTERM, then SIGKILL after 5 s.
func (l *failoverLab) Close() {
	for _, p := range l.procs {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for name, p := range l.procs {
		select {
		case <-p.exited:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		delete(l.procs, name)
	}
}

// failoverClient is one lab participant.
type failoverClient struct {
	c   *loadgen.Client
	sig *loadgen.WSSignaler
}

// fixedToken returns tok for every room and identity: the participant
// keeps the token it was given, as a browser does.
func fixedToken(tok string) loadgen.TokenFunc {
	return func(context.Context, string, string) (string, error) { return tok, nil }
}

// dial joins a publishing and subscribing participant of room through
// signal process name with tok (empty: a demo token of that signal),
// and waits until it is connected.
func (l *failoverLab) dial(ctx context.Context, api *webrtc.API, name, room, identity, tok string) (*failoverClient, error) {
	url := "ws://" + l.signals[name] + "/ws"
	tf := loadgen.DemoTokens(url)
	if tok != "" {
		tf = fixedToken(tok)
	}
	sig := loadgen.NewWSSignaler(url, tf)
	jctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c, err := loadgen.Dial(jctx, api, sig, loadgen.ClientConfig{Room: room, Identity: identity, Publish: true, Subscribe: true,
		VideoBitrate: 200_000})
	if err != nil {
		return nil, fmt.Errorf("lab: %s joins through %s: %w", identity, name, err)
	}
	select {
	case <-c.Connected():
	case <-jctx.Done():
		c.Close()
		return nil, fmt.Errorf("lab: %s not connected", identity)
	}
	return &failoverClient{c: c, sig: sig}, nil
}

// receiving waits until every client has received more than a few
// packets on its newest track set since after (of rejoin k when k >= 0).
func receivingSince(ctx context.Context, cs []*failoverClient, d time.Duration, ok func(*failoverClient) bool) error {
	deadline := time.Now().Add(d)
	for {
		all := true
		for _, c := range cs {
			if !ok(c) {
				all = false
			}
		}
		if all {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: no media after %v", d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// receives reports whether c has received packets of at least n tracks.
func receives(c *failoverClient, n int) bool {
	got := 0
	for _, t := range c.c.Tracks() {
		if t.Packets() > 10 {
			got++
		}
	}
	return got >= n
}

// failoverRound is one kill's measurement.
type failoverRound struct {
	Node string
	// Detect is from the kill to the last participant's rejoin message;
	// Media from the kill to the last participant's first packet again.
	Detect, Media time.Duration
	// Gap is the longest media interruption a participant saw.
	Gap time.Duration
}

// killRound kills the node holding cs's call (all on one node) and
// waits until every participant receives media again through the other,
// within limit.
func (l *failoverLab) killRound(ctx context.Context, cs []*failoverClient, limit time.Duration) (failoverRound, error) {
	node := cs[0].sig.Node()
	for _, c := range cs[1:] {
		if n := c.sig.Node(); n != node {
			return failoverRound{}, fmt.Errorf("lab: the call is on %s and %s", node, n)
		}
	}
	before := make([]int, len(cs))
	for i, c := range cs {
		before[i] = len(c.c.Rejoins())
	}
	t0 := time.Now()
	if err := l.kill(node); err != nil {
		return failoverRound{}, err
	}
	r := failoverRound{Node: node}
	err := receivingSince(ctx, cs, limit+10*time.Second, func(c *failoverClient) bool {
		i := indexOf(cs, c)
		rs := c.c.Rejoins()
		return len(rs) > before[i] && !rs[before[i]].MediaAgain.IsZero()
	})
	if err != nil {
		return r, fmt.Errorf("lab: after killing %s: %w", node, err)
	}
	for i, c := range cs {
		rj := c.c.Rejoins()[before[i]]
		if rj.Err != nil {
			return r, fmt.Errorf("lab: rejoin: %w", rj.Err)
		}
		r.Detect = max(r.Detect, rj.At.Sub(t0))
		r.Media = max(r.Media, rj.MediaAgain.Sub(t0))
		r.Gap = max(r.Gap, rj.Gap())
		if n := c.sig.Node(); n == node {
			return r, fmt.Errorf("lab: a participant rejoined on the dead node %s", n)
		}
	}
	if r.Media > limit {
		return r, fmt.Errorf("lab: media again %v after killing %s, over %v", r.Media, node, limit)
	}
	return r, nil
}

func indexOf(cs []*failoverClient, c *failoverClient) int {
	for i := range cs {
		if cs[i] == c {
			return i
		}
	}
	return -1
}

// signalDownHold is how long signal keeps a node it declared dead out of
// placement (internal/signal downHold): a restarted node is taken again
// after it.
const signalDownHold = bus.NodeExpiry + time.Second

// runFailoverRounds starts a lab, puts two participants in a call and
// kills the node holding it n times (restarting the killed node after
// each round so that two nodes stand), returning every round.
func runFailoverRounds(ctx context.Context, exe string, env []string, dir string, n int, limit time.Duration, progress func(int, failoverRound)) ([]failoverRound, error) {
	l, err := startFailoverLab(ctx, exe, env, dir, io.Discard, "signal")
	if err != nil {
		return nil, err
	}
	defer l.Close()
	api, err := loadgen.NewAPI(false, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		return nil, err
	}
	var cs []*failoverClient
	defer func() {
		for _, c := range cs {
			c.c.Close()
		}
	}()
	for _, id := range []string{"alice", "bob"} {
		c, err := l.dial(ctx, api, "signal", "call", id, "")
		if err != nil {
			return nil, err
		}
		cs = append(cs, c)
	}
	if err := receivingSince(ctx, cs, 15*time.Second, func(c *failoverClient) bool { return receives(c, 2) }); err != nil {
		return nil, err
	}
	var rounds []failoverRound
	for i := range n {
		r, err := l.killRound(ctx, cs, limit)
		if err != nil {
			return rounds, fmt.Errorf("round %d: %w", i+1, err)
		}
		rounds = append(rounds, r)
		if progress != nil {
			progress(i+1, r)
		}
		if i == n-1 {
			break
		}
		if err := l.startNode(ctx, r.Node); err != nil {
			return rounds, err
		}
		// Signal takes the restarted node once its hold on the id ends.
		select {
		case <-ctx.Done():
			return rounds, ctx.Err()
		case <-time.After(signalDownHold - (r.Media - r.Detect)):
		}
	}
	return rounds, nil
}

// labFailover is "traverse lab failover [--kills N] [--limit D]".
func labFailover(ctx context.Context, w io.Writer, args []string) error {
	fs := newFlagSet("lab failover", "lab failover [--kills N] [--limit D]")
	fs.SetOutput(w)
	kills := fs.Int("kills", 10, "how many times to kill the node holding the call")
	limit := fs.Duration("limit", 5*time.Second, "fail when media takes longer than this to flow again after a kill")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *kills < 1 || *kills > 1000 {
		return errors.New("--kills must be 1-1000")
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "traverse-failover-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Fprintf(w, "failover lab: bus, sfu n1 + n2, signal as processes of %s; two participants; SIGKILL the call's node %d times\n", exe, *kills)
	rounds, err := runFailoverRounds(ctx, exe, nil, dir, *kills, *limit, func(i int, r failoverRound) {
		fmt.Fprintf(w, "kill %2d: %s  rejoin message %4d ms  media again %4d ms  longest gap %4d ms\n", i, r.Node,
			r.Detect.Milliseconds(), r.Media.Milliseconds(), r.Gap.Milliseconds())
	})
	if len(rounds) > 0 {
		printFailoverSummary(w, rounds)
	}
	return err
}

func printFailoverSummary(w io.Writer, rounds []failoverRound) {
	var media, detect []time.Duration
	for _, r := range rounds {
		media = append(media, r.Media)
		detect = append(detect, r.Detect)
	}
	m := loadgen.Percentiles(media, 0.5, 0.95, 1)
	d := loadgen.Percentiles(detect, 0.5, 0.95, 1)
	sort.Slice(rounds, func(i, j int) bool { return rounds[i].Media < rounds[j].Media })
	fmt.Fprintf(w, "%d kills: time from kill to media again p50 %d ms, p95 %d ms, max %d ms; to the rejoin message p50 %d ms, p95 %d ms\n",
		len(rounds), m[0].Milliseconds(), m[1].Milliseconds(), m[2].Milliseconds(), d[0].Milliseconds(), d[1].Milliseconds())
}
