package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/signal"
)

func init() {
	register(command{name: "load", summary: "synthetic WebRTC load on the SFU: rooms x publishers x subscribers", run: runLoad})
}

// runLoad is "traverse load": half of it is its eighteen flags, the rest
// wires them into loadgen.Config and a signaler.
func runLoad(ctx context.Context, args []string) error {
	fs := newFlagSet("load", "load --url URL --rooms N --publishers P --subscribers S --duration D [--json]")
	var (
		wsURL    = fs.String("url", "", "signal WebSocket `URL` (ws://127.0.0.1:7880/ws); tokens from its /token unless --token-key")
		tokenKey = fs.String("token-key", "", "mint tokens with this HMAC `key` instead of asking /token")
		natsURLs = fs.String("nats", "", "speak the bus directly instead of signal: NATS `URL`s")
		natsCred = fs.String("nats-creds", "", "with --nats: the signal role's credentials `file` (traverse bus --creds-dir)")
		node     = fs.String("node", "", "with --nats: the SFU node `id` (default: the least loaded announced node)")
		rooms    = fs.Int("rooms", 1, "rooms")
		pubs     = fs.Int("publishers", 1, "publishers per room (they also subscribe)")
		subs     = fs.Int("subscribers", 1, "subscribe-only participants per room")
		duration = fs.Duration("duration", 10*time.Second, "how long media flows once everyone joined")
		bitrate  = fs.Int("video-bitrate", 1_000_000, "video `bit/s` per publisher (top layer with --simulcast; negative: audio only)")
		simul    = fs.Bool("simulcast", false, "publish three simulcast layers")
		tcp      = fs.Bool("tcp", false, "clients use ICE-TCP")
		parallel = fs.Int("parallel", 8, "joins in flight at once")
		prefix   = fs.String("room-prefix", "load", "room names are PREFIX0, PREFIX1, ...")
		asJSON   = fs.Bool("json", false, "print the summary as JSON")
		janus    = fs.String("janus", "", "load a Janus videoroom at this HTTP API `URL` (http://127.0.0.1:8088/janus) instead, for comparison")
		iceIP    = fs.String("ice-ip", "", "clients gather host candidates on this `IP` only (default: loopback)")
		pid      = fs.Int("server-pid", 0, "report this server `process`'s CPU time and memory over the measurement")
		feedback = fs.Bool("feedback", true, "clients send RTCP as browsers do: receiver and sender reports, NACKs, transport-cc sequence numbers and feedback (pion's default interceptors); --feedback=false for bare RTP clients")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := loadgen.Config{Rooms: *rooms, Publishers: *pubs, Subscribers: *subs, Duration: *duration,
		RoomPrefix: *prefix, VideoBitrate: *bitrate, Simulcast: *simul, TCP: *tcp, Parallel: *parallel,
		ServerPID: *pid, JanusURL: *janus, Feedback: *feedback}
	switch {
	case *janus != "":
	case *natsURLs != "":
		bc, err := bus.Connect(bus.Config{URLs: bus.SplitURLs(*natsURLs), Name: "traverse load", RequestTimeout: 30 * time.Second, CredsFile: *natsCred}, nil)
		if err != nil {
			return err
		}
		defer bc.Close()
		if *node == "" {
			if *node, err = pickNode(ctx, bc); err != nil {
				return err
			}
		}
		cfg.NewSignaler = func() loadgen.Signaler { return loadgen.NewBusSignaler(bc, *node) }
	case *wsURL != "":
		tokens := loadgen.DemoTokens(*wsURL)
		if *tokenKey != "" {
			key := []byte(*tokenKey)
			tokens = func(_ context.Context, room, identity string) (string, error) {
				return signal.MintToken(key, signal.Claims{Room: room, Identity: identity, Publish: true, Subscribe: true,
					Expires: time.Now().Add(time.Hour).Unix()})
			}
		}
		cfg.NewSignaler = func() loadgen.Signaler { return loadgen.NewWSSignaler(*wsURL, tokens) }
	default:
		return errors.New("--url, --nats or --janus is required")
	}
	var only netip.Addr
	if *iceIP != "" {
		var err error
		if only, err = netip.ParseAddr(*iceIP); err != nil {
			return fmt.Errorf("--ice-ip: %w", err)
		}
	}
	api, err := loadgen.NewAPI(*tcp, only, loadgen.WithFeedback(*feedback))
	if err != nil {
		return err
	}
	cfg.Progress = func(p loadgen.Progress) {
		fmt.Fprintf(os.Stderr, "%5.0fs  peers %d/%d  received %8.0f pkt/s  loss %.2f%%\n",
			p.Elapsed.Seconds(), p.Connected, p.Peers, p.PacketsPerSec, 100*p.Loss)
	}
	sum, err := loadgen.Run(ctx, api, cfg)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(sum)
	}
	printSummary(sum)
	if sum.Connected == 0 {
		return errors.New("no client connected")
	}
	return nil
}

// printSummary prints a run's summary for a reader.
func printSummary(sum loadgen.Summary) {
	fmt.Printf("rooms %d x (%d publishers + %d subscribers) = %d peers, %d connected, %d failed%s\n",
		sum.Rooms, sum.Publishers, sum.Subscribers, sum.Peers, sum.Connected, sum.JoinFailures, firstErr(sum.FirstJoinError))
	fmt.Printf("published %.0f pkt/s; received %.0f pkt/s (%.1f Mbit/s) of %.0f expected over %.1fs\n",
		sum.PublishedPerSec, sum.PacketsPerSecond, sum.BitsPerSecond/1e6, sum.ExpectedPerSecond, sum.Seconds)
	fmt.Printf("loss %.3f%% (%d packets), mean jitter %.2f ms\n", 100*sum.LossFraction, sum.Lost, sum.JitterMeanMillis)
	fmt.Printf("join (to connected) p50 %.0f ms, p95 %.0f ms, p99 %.0f ms\n", sum.JoinP50Millis, sum.JoinP95Millis, sum.JoinP99Millis)
	if sum.Rejoins > 0 {
		fmt.Printf("rejoins %d (%d failed), media gap p50 %.0f ms, p95 %.0f ms, max %.0f ms\n", sum.Rejoins, sum.RejoinFailures,
			sum.RejoinGapP50Millis, sum.RejoinGapP95Millis, sum.RejoinGapMaxMillis)
	}
	if sum.ServerCPUSeconds > 0 {
		fmt.Printf("server: %.2f CPU-seconds (%.0f%% of a core), %.2f CPU-s per million forwarded packets (%.0f packets per CPU-second), RSS %.1f MiB, %.0f KiB per participant\n",
			sum.ServerCPUSeconds, sum.ServerCPUPercent, sum.CPUSecondsPerMillionPackets, sum.PacketsPerCPUSecond, sum.ServerRSSMiB, sum.MemoryPerPeerKiB)
	}
}

func firstErr(s string) string {
	if s == "" {
		return ""
	}
	return " (first: " + s + ")"
}

// pickNode waits for node announcements and returns the least loaded node.
func pickNode(ctx context.Context, bc *bus.Client) (string, error) {
	var nt bus.NodeTable
	sub, err := bc.SubscribeNodes(func(a bus.NodeAnnounce) { nt.Update(a, time.Now()) })
	if err != nil {
		return "", err
	}
	defer sub.Unsubscribe()
	deadline := time.Now().Add(bus.NodeExpiry)
	for time.Now().Before(deadline) {
		if a, ok := nt.Pick("", time.Now()); ok {
			return a.Node, nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return "", errors.New("no SFU node announced on the bus")
}
