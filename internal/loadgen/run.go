package loadgen

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/traverse-rtc/traverse/internal/procstat"
)

// Config is one load run: Rooms rooms, each with Publishers participants
// that publish and subscribe and Subscribers that only subscribe.
type Config struct {
	Rooms       int
	Publishers  int
	Subscribers int
	Duration    time.Duration
	// RoomPrefix names the rooms PREFIX0, PREFIX1, ... (default "load").
	RoomPrefix   string
	VideoBitrate int
	Simulcast    bool
	TCP          bool
	// Parallel joins at once (default 8).
	Parallel int
	// NewSignaler makes each client's signaling.
	NewSignaler func() Signaler
	// Progress, when set, is called every second.
	Progress func(Progress)
	// ServerPID, when set, is the server process whose CPU time
	// (utime+stime from /proc/PID/stat) and resident memory the summary
	// reports over the measurement window.
	ServerPID  int
	serverRSS0 uint64
	// JanusURL, when set, runs the same load against a Janus videoroom at
	// this HTTP API base ("http://127.0.0.1:8088/janus") instead of
	// NewSignaler: each participant publishes on one peer connection and
	// subscribes to the others' feeds on a second (Janus's model).
	JanusURL string
	// Feedback is recorded in the summary: whether the API's clients were
	// made with WithFeedback (the API, not Run, decides what they send).
	Feedback bool
}

// Progress is the state once a second.
type Progress struct {
	Elapsed       time.Duration
	Connected     int
	Peers         int
	PacketsPerSec float64
	Loss          float64
}

// Summary is what a run measured.
type Summary struct {
	Rooms            int     `json:"rooms"`
	Publishers       int     `json:"publishers_per_room"`
	Subscribers      int     `json:"subscribers_per_room"`
	Peers            int     `json:"peers"`
	Connected        int     `json:"connected"`
	JoinFailures     int     `json:"join_failures"`
	Seconds          float64 `json:"seconds"`
	PacketsReceived  uint64  `json:"packets_received"`
	PacketsPerSecond float64 `json:"packets_per_second"`
	BitsPerSecond    float64 `json:"bits_per_second"`
	PublishedPerSec  float64 `json:"published_packets_per_second"`
	Feedback         bool    `json:"feedback"`
	Lost             uint64  `json:"lost"`
	Repaired         uint64  `json:"repaired"`
	LossFraction     float64 `json:"loss_fraction"`
	JitterMeanMillis float64 `json:"jitter_mean_ms"`
	JoinP50Millis    float64 `json:"join_p50_ms"`
	JoinP95Millis    float64 `json:"join_p95_ms"`
	JoinP99Millis    float64 `json:"join_p99_ms"`
	FirstJoinError   string  `json:"first_join_error,omitempty"`
	// Rejoins counts the clients' rejoins (their node failed or drained,
	// docs/failover.md); the gap is each one's media interruption, from
	// the last packet received before to the first after.
	Rejoins            int     `json:"rejoins,omitempty"`
	RejoinFailures     int     `json:"rejoin_failures,omitempty"`
	RejoinGapP50Millis float64 `json:"rejoin_gap_p50_ms,omitempty"`
	RejoinGapP95Millis float64 `json:"rejoin_gap_p95_ms,omitempty"`
	RejoinGapMaxMillis float64 `json:"rejoin_gap_max_ms,omitempty"`
	ExpectedPerSecond  float64 `json:"expected_packets_per_second"`

	ServerCPUSeconds            float64 `json:"server_cpu_seconds,omitempty"`
	ServerCPUPercent            float64 `json:"server_cpu_percent,omitempty"`
	CPUSecondsPerMillionPackets float64 `json:"cpu_seconds_per_million_packets,omitempty"`
	PacketsPerCPUSecond         float64 `json:"packets_per_cpu_second,omitempty"`
	ServerRSSMiB                float64 `json:"server_rss_mib,omitempty"`
	MemoryPerPeerKiB            float64 `json:"memory_per_peer_kib,omitempty"`
}

// Run joins every client, lets media flow for Duration (counted from when
// every client has joined or failed), and returns the summary. The clients
// are closed before it returns.
func Run(ctx context.Context, api *webrtc.API, cfg Config) (Summary, error) {
	if cfg.Rooms <= 0 || cfg.Publishers < 0 || cfg.Subscribers < 0 || cfg.Publishers+cfg.Subscribers == 0 {
		return Summary{}, errors.New("loadgen: need rooms >= 1 and publishers + subscribers >= 1")
	}
	if cfg.RoomPrefix == "" {
		cfg.RoomPrefix = "load"
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 8
	}
	if cfg.VideoBitrate == 0 {
		cfg.VideoBitrate = 1_000_000
	}
	var specs []spec
	for r := range cfg.Rooms {
		room := fmt.Sprintf("%s%d", cfg.RoomPrefix, r)
		for i := range cfg.Publishers + cfg.Subscribers {
			specs = append(specs, spec{ClientConfig{Room: room, Identity: fmt.Sprintf("%s-%d", room, i),
				Publish: i < cfg.Publishers, Subscribe: true, Simulcast: cfg.Simulcast,
				VideoBitrate: cfg.VideoBitrate, TCP: cfg.TCP}})
		}
	}
	sum := Summary{Rooms: cfg.Rooms, Publishers: cfg.Publishers, Subscribers: cfg.Subscribers, Peers: len(specs), Feedback: cfg.Feedback}
	clients := make([]*Client, len(specs))
	errs := make([]error, len(specs))
	defer func() {
		var wg sync.WaitGroup
		for _, c := range clients {
			if c != nil {
				wg.Add(1)
				go func() { defer wg.Done(); c.Close() }()
			}
		}
		wg.Wait()
	}()

	cfg.serverRSS0 = procstat.ReadPID(cfg.ServerPID).RSS
	if cfg.JanusURL != "" {
		return runJanus(ctx, api, cfg, specs2(specs), sum)
	}
	start := time.Now()
	lim := newLimiter(cfg.Parallel)
	for i, sp := range specs {
		lim.do(func() {
			clients[i], errs[i] = dialConnected(ctx, "", func(ctx context.Context) (*Client, error) {
				return Dial(ctx, api, cfg.NewSignaler(), sp.cfg)
			})
		})
		if ctx.Err() != nil {
			break
		}
	}
	lim.wait()
	return measure(ctx, cfg, clients, errs, sum, start)
}

// joinTimeout bounds one client's join, connection included.
const joinTimeout = 30 * time.Second

// dialConnected dials a client and waits until it is connected, within
// joinTimeout. A client that does not connect in time is returned with
// the error, so that the caller closes it.
func dialConnected(ctx context.Context, what string, dial func(context.Context) (*Client, error)) (*Client, error) {
	jctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	c, err := dial(jctx)
	if err != nil {
		return nil, err
	}
	select {
	case <-c.Connected():
		return c, nil
	case <-jctx.Done():
		if what != "" {
			what += " "
		}
		return c, fmt.Errorf("%snot connected: %w", what, jctx.Err())
	}
}

// limiter runs functions in goroutines, at most n at once.
type limiter struct {
	sem chan struct{}
	wg  sync.WaitGroup
}

func newLimiter(n int) *limiter { return &limiter{sem: make(chan struct{}, n)} }

// do starts f once fewer than n run.
func (l *limiter) do(f func()) {
	l.wg.Add(1)
	l.sem <- struct{}{}
	go func() {
		defer l.wg.Done()
		defer func() { <-l.sem }()
		f()
	}()
}

// wait waits for every f.
func (l *limiter) wait() { l.wg.Wait() }

// measure records join results, waits a second for renegotiation to
// settle, then counts what the clients receive for cfg.Duration.
func measure(ctx context.Context, cfg Config, clients []*Client, errs []error, sum Summary, start time.Time) (Summary, error) {
	sum.addJoins(clients, errs)
	// Let renegotiation settle before measuring.
	settle := time.NewTimer(time.Second)
	select {
	case <-settle.C:
	case <-ctx.Done():
	}
	before := totalsOf(clients)
	sent0 := sentBy(clients)
	p := procstat.ReadPID(cfg.ServerPID)
	cpu0, rss1 := p.CPU(), p.RSS
	t0 := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	end := time.NewTimer(cfg.Duration)
	defer end.Stop()
	last, lastAt := before, t0
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-end.C:
			break loop
		case now := <-tick.C:
			t := totalsOf(clients)
			if cfg.Progress != nil {
				p := Progress{Elapsed: now.Sub(start), Connected: sum.Connected, Peers: sum.Peers,
					PacketsPerSec: float64(t.packets-last.packets) / now.Sub(lastAt).Seconds()}
				if d := t.packets - last.packets + t.lost - last.lost; t.lost > last.lost && d > 0 {
					p.Loss = float64(t.lost-last.lost) / float64(d)
				}
				cfg.Progress(p)
			}
			last, lastAt = t, now
		}
	}
	after := totalsOf(clients)
	secs := time.Since(t0).Seconds()
	sum.Seconds = secs
	sum.PacketsReceived = after.packets - before.packets
	sum.PacketsPerSecond = float64(sum.PacketsReceived) / secs
	sum.BitsPerSecond = float64(after.bytes-before.bytes) * 8 / secs
	if after.lost > before.lost { // a retransmission may repair a gap from before the window
		sum.Lost = after.lost - before.lost
	}
	sum.Repaired = after.repaired
	if d := sum.PacketsReceived + sum.Lost; d > 0 {
		sum.LossFraction = float64(sum.Lost) / float64(d)
	}
	if after.tracks > 0 {
		sum.JitterMeanMillis = float64(after.jitter.Microseconds()) / float64(after.tracks) / 1000
	}
	// What the room layout should deliver: every packet published reaches
	// every other participant of its room.
	sum.PublishedPerSec = float64(sentBy(clients)-sent0) / secs
	sum.addServer(cfg, cpu0, rss1, secs)
	sum.addRejoins(clients)
	sum.ExpectedPerSecond = sum.PublishedPerSec * float64(cfg.Publishers+cfg.Subscribers-1)
	return sum, nil
}

// addJoins counts the join failures and the connected clients, and the
// join time percentiles.
func (sum *Summary) addJoins(clients []*Client, errs []error) {
	for _, err := range errs {
		if err != nil {
			sum.JoinFailures++
			if sum.FirstJoinError == "" {
				sum.FirstJoinError = err.Error()
			}
		}
	}
	var joins []time.Duration
	for _, c := range clients {
		if c != nil && c.JoinTime() > 0 {
			sum.Connected++
			joins = append(joins, c.JoinTime())
		}
	}
	slices.Sort(joins)
	pct := func(p float64) float64 {
		if len(joins) == 0 {
			return 0
		}
		return float64(joins[min(len(joins)-1, int(p*float64(len(joins))))].Microseconds()) / 1000
	}
	sum.JoinP50Millis, sum.JoinP95Millis, sum.JoinP99Millis = pct(0.50), pct(0.95), pct(0.99)
}

// addRejoins counts the clients' rejoins and their media gaps.
func (sum *Summary) addRejoins(clients []*Client) {
	var gaps []time.Duration
	for _, c := range clients {
		if c == nil {
			continue
		}
		for _, r := range c.Rejoins() {
			sum.Rejoins++
			if r.Err != nil || r.MediaAgain.IsZero() {
				sum.RejoinFailures++
				continue
			}
			gaps = append(gaps, r.Gap())
		}
	}
	if len(gaps) == 0 {
		return
	}
	p := Percentiles(gaps, 0.50, 0.95, 1)
	sum.RejoinGapP50Millis, sum.RejoinGapP95Millis, sum.RejoinGapMaxMillis = millis(p[0]), millis(p[1]), millis(p[2])
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Percentiles returns the qs (0-1) quantiles of ds, by the nearest rank
// (1 is the maximum). ds is sorted in place.
func Percentiles(ds []time.Duration, qs ...float64) []time.Duration {
	slices.Sort(ds)
	out := make([]time.Duration, len(qs))
	if len(ds) == 0 {
		return out
	}
	for i, q := range qs {
		out[i] = ds[min(len(ds)-1, int(q*float64(len(ds))))]
	}
	return out
}

// addServer adds the server's CPU time and memory over the measurement
// (cpu0 at its start, rss1 its resident set then) when cfg.ServerPID is
// set.
func (sum *Summary) addServer(cfg Config, cpu0 float64, rss1 uint64, secs float64) {
	if cfg.ServerPID <= 0 {
		return
	}
	cpu1 := procstat.ReadPID(cfg.ServerPID).CPU()
	sum.ServerCPUSeconds = cpu1 - cpu0
	sum.ServerCPUPercent = 100 * sum.ServerCPUSeconds / secs
	if sum.PacketsReceived > 0 {
		sum.CPUSecondsPerMillionPackets = sum.ServerCPUSeconds / float64(sum.PacketsReceived) * 1e6
		sum.PacketsPerCPUSecond = float64(sum.PacketsReceived) / sum.ServerCPUSeconds
	}
	if sum.Connected > 0 && cfg.serverRSS0 > 0 {
		sum.ServerRSSMiB = float64(rss1) / (1 << 20)
		sum.MemoryPerPeerKiB = float64(int64(rss1)-int64(cfg.serverRSS0)) / 1024 / float64(sum.Peers)
	}
}

// trackTotals sum the counters of every track the clients receive.
type trackTotals struct {
	packets, lost, bytes, repaired uint64
	jitter                         time.Duration
	tracks                         int
}

func totalsOf(clients []*Client) (t trackTotals) {
	for _, c := range clients {
		if c == nil {
			continue
		}
		for _, r := range c.Tracks() {
			t.packets += r.Packets()
			t.lost += r.Lost()
			t.bytes += r.Bytes()
			t.repaired += r.Repaired()
			t.jitter += r.Jitter()
			t.tracks++
		}
	}
	return t
}

// sentBy is how many RTP packets the clients published.
func sentBy(clients []*Client) (n uint64) {
	for _, c := range clients {
		if c != nil {
			n += c.Sent()
		}
	}
	return n
}

type spec struct {
	cfg ClientConfig
}

func specs2(s []spec) []ClientConfig {
	out := make([]ClientConfig, len(s))
	for i, x := range s {
		out[i] = x.cfg
	}
	return out
}

// janusRooms numbers the rooms PREFIX0, PREFIX1, ...: Janus rooms are
// numbers, and a base per prefix keeps runs apart.
func janusRooms(prefix string) (base int, id func(name string) int) {
	h := fnv.New32a()
	_, _ = h.Write([]byte(prefix))
	base = 10000 + int(h.Sum32()%10000)*1000
	return base, func(name string) int {
		var n int
		_, _ = fmt.Sscanf(name[len(prefix):], "%d", &n)
		return base + n
	}
}

func runJanus(ctx context.Context, api *webrtc.API, cfg Config, specs []ClientConfig, sum Summary) (Summary, error) {
	j, err := NewJanus(ctx, cfg.JanusURL)
	if err != nil {
		return sum, err
	}
	defer j.Close()
	var clients []*Client
	var errs []error
	var mu sync.Mutex
	add := func(c *Client, err error) {
		if err != nil && c != nil {
			c.Close() // joined, not connected in time: counted a failure
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errs = append(errs, err)
			return
		}
		clients = append(clients, c)
	}
	defer func() {
		var wg sync.WaitGroup
		for _, c := range clients {
			wg.Add(1)
			go func() { defer wg.Done(); c.Close() }()
		}
		wg.Wait()
	}()
	start := time.Now()
	base, roomID := janusRooms(cfg.RoomPrefix)
	for r := range cfg.Rooms {
		if err := j.CreateRoom(ctx, base+r, cfg.Publishers+1); err != nil {
			return sum, fmt.Errorf("janus create room: %w", err)
		}
	}
	lim := newLimiter(cfg.Parallel)
	feeds := map[string][]uint64{} // room -> feeds
	feedOf := map[string]uint64{}  // identity -> feed
	for _, sp := range specs {
		if !sp.Publish {
			continue
		}
		lim.do(func() {
			sig := NewJanusPublisher(j, roomID(sp.Room))
			c, err := dialConnected(ctx, "janus publisher", func(ctx context.Context) (*Client, error) {
				return Dial(ctx, api, sig, ClientConfig{Room: sp.Room, Identity: sp.Identity, Publish: true,
					VideoBitrate: sp.VideoBitrate, Simulcast: sp.Simulcast})
			})
			add(c, err)
			if err == nil {
				mu.Lock()
				feeds[sp.Room] = append(feeds[sp.Room], sig.Feed())
				feedOf[sp.Identity] = sig.Feed()
				mu.Unlock()
			}
		})
	}
	lim.wait()
	for _, sp := range specs {
		var want []uint64
		for _, f := range feeds[sp.Room] {
			if f != feedOf[sp.Identity] {
				want = append(want, f)
			}
		}
		if len(want) == 0 {
			continue
		}
		lim.do(func() {
			add(dialConnected(ctx, "janus subscriber", func(ctx context.Context) (*Client, error) {
				return DialJanusSubscriber(ctx, api, j, roomID(sp.Room), want)
			}))
		})
	}
	lim.wait()
	return measure(ctx, cfg, clients, errs, sum, start)
}
