package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/traverse-rtc/traverse/client/p2p"
	"github.com/traverse-rtc/traverse/internal/config"
)

const callSynopsis = `call --signal ws://HOST:PORT/p2p --token TOKEN (--listen | --to NAME) [flags]

A peer-to-peer call (client/p2p, docs/p2p.md): one side listens for the
other by name through the signaling service's rendezvous, the other calls
it. Both send a synthetic media stream (--rate packets of --size bytes a
second) and print, as it goes, the path (direct, turn-udp, turn-tcp,
turn-tls), every path change, and the RTT, loss and jitter of what they
receive: ping for real-time paths. Tokens come from "traverse token"
(room: the rendezvous; identity: this peer's name).`

type callConfig struct {
	Signal       string        `yaml:"signal"`
	Token        string        `yaml:"token"`
	Listen       bool          `yaml:"listen"`
	To           string        `yaml:"to"`
	STUN         string        `yaml:"stun"`
	TURN         string        `yaml:"turn"`
	TURNUser     string        `yaml:"turn-user"`
	TURNPass     string        `yaml:"turn-pass"`
	TURNRealm    string        `yaml:"turn-realm"`
	TURNInsecure bool          `yaml:"turn-insecure"`
	RelayOnly    bool          `yaml:"relay-only"`
	RelayNodes   bool          `yaml:"relay-nodes"`
	Region       string        `yaml:"region"`
	PortMap      bool          `yaml:"portmap"`
	Rate         int           `yaml:"rate"`
	Size         int           `yaml:"size"`
	Duration     time.Duration `yaml:"duration"`
	Interval     time.Duration `yaml:"interval"`
	DirectTimout time.Duration `yaml:"direct-timeout"`
}

func runCall(ctx context.Context, args []string) error { return call(ctx, os.Stdout, args) }

func call(ctx context.Context, w io.Writer, args []string) error {
	cfg := callConfig{Rate: 50, Size: 160, Interval: time.Second, DirectTimout: 2 * time.Second, PortMap: true}
	fs := newFlagSet("call", callSynopsis)
	fs.StringVar(&cfg.Signal, "signal", "", "the signaling service's rendezvous `URL` (ws://HOST:PORT/p2p)")
	fs.StringVar(&cfg.Token, "token", "", "this peer's `token` (traverse token; env TRAVERSE_TOKEN)")
	fs.BoolVar(&cfg.Listen, "listen", false, "wait for a caller")
	fs.StringVar(&cfg.To, "to", "", "call the peer of this `name`")
	fs.StringVar(&cfg.STUN, "stun", "", "STUN servers, comma-separated `HOST:PORT`s (the nearest answers first)")
	fs.StringVar(&cfg.TURN, "turn", "", "TURN servers, comma-separated `TRANSPORT:HOST:PORT` (udp, tcp or tls), tried UDP first")
	fs.StringVar(&cfg.TURNUser, "turn-user", "", "TURN user `name`")
	fs.StringVar(&cfg.TURNPass, "turn-pass", "", "TURN `password`")
	fs.StringVar(&cfg.TURNRealm, "turn-realm", "", "TURN `realm`")
	fs.BoolVar(&cfg.TURNInsecure, "turn-insecure", false, "do not verify a TLS TURN server's certificate (tests)")
	fs.BoolVar(&cfg.RelayOnly, "relay-only", false, "never go direct: hide the peers' addresses behind TURN")
	fs.BoolVar(&cfg.RelayNodes, "relay-nodes", false, "after direct, before TURN: a relay node both peers reach, offered by --signal's POST /relay/nodes (both peers set it)")
	fs.StringVar(&cfg.Region, "region", "", "this peer's `region`, matched against relay nodes' (nearest first)")
	fs.BoolVar(&cfg.PortMap, "portmap", cfg.PortMap, "ask the home router for a port mapping (PCP, NAT-PMP, UPnP) as one more direct candidate; a router that answers nothing costs 1 s in the background")
	fs.IntVar(&cfg.Rate, "rate", cfg.Rate, "media `packets` per second")
	fs.IntVar(&cfg.Size, "size", cfg.Size, "media packet payload `bytes`")
	fs.DurationVar(&cfg.Duration, "duration", 0, "end the call after this long (0: at interrupt)")
	fs.DurationVar(&cfg.Interval, "interval", cfg.Interval, "print a report this often")
	fs.DurationVar(&cfg.DirectTimout, "direct-timeout", cfg.DirectTimout, "direct probing time before TURN is tried")
	if _, err := config.Load(fs, args, &cfg); err != nil {
		return err
	}
	if cfg.Signal == "" || cfg.Token == "" || cfg.Listen == (cfg.To != "") {
		fs.Usage()
		return &exitError{code: 2, err: errors.New("need --signal, --token and one of --listen or --to")}
	}
	if cfg.Rate <= 0 || cfg.Rate > 10000 || cfg.Size < 12 || cfg.Size > p2p.MaxPayload || cfg.Interval <= 0 {
		return &exitError{code: 2, err: fmt.Errorf("--rate must be 1-10000, --size 12-%d, --interval positive", p2p.MaxPayload)}
	}
	opts := []p2p.Option{p2p.WithDirectTimeout(cfg.DirectTimout)}
	if cfg.STUN != "" {
		opts = append(opts, p2p.WithSTUN(strings.Split(cfg.STUN, ",")...))
	}
	if cfg.TURN != "" {
		for _, s := range strings.Split(cfg.TURN, ",") {
			tr, addr, ok := strings.Cut(s, ":")
			if !ok {
				return &exitError{code: 2, err: fmt.Errorf("--turn %q: want TRANSPORT:HOST:PORT", s)}
			}
			opts = append(opts, p2p.WithTURN(p2p.TURNServer{Addr: addr, Transport: tr, Username: cfg.TURNUser,
				Password: cfg.TURNPass, Realm: cfg.TURNRealm, InsecureSkipVerify: cfg.TURNInsecure}))
		}
	}
	if cfg.RelayOnly {
		opts = append(opts, p2p.WithRelayOnly())
	}
	if cfg.RelayNodes {
		opts = append(opts, p2p.WithRelayNodes(p2p.SignalRelayNodes(cfg.Signal, cfg.Token, nil)), p2p.WithRegion(cfg.Region))
	}
	if !cfg.PortMap {
		opts = append(opts, p2p.WithoutPortMap())
	}
	start := time.Now()
	var outMu sync.Mutex // guards w
	printf := func(format string, a ...any) {
		outMu.Lock()
		fmt.Fprintf(w, "%6.2fs ", time.Since(start).Seconds())
		fmt.Fprintf(w, format, a...)
		outMu.Unlock()
	}
	opts = append(opts, p2p.OnPathChange(func(ch p2p.PathChange) {
		printf("path %s (%s, was %s)\n", ch.To, ch.Reason, ch.From.Kind)
	}))

	var sig *p2p.SignalConn
	var err error
	if cfg.Listen {
		printf("listening through %s\n", cfg.Signal)
		sig, err = p2p.AcceptSignal(ctx, cfg.Signal, cfg.Token)
	} else {
		printf("calling %s through %s\n", cfg.To, cfg.Signal)
		sig, err = p2p.DialSignal(ctx, cfg.Signal, cfg.Token, cfg.To)
	}
	if err != nil {
		return err
	}
	defer sig.Close()
	conn, err := p2p.Connect(ctx, sig, opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	printf("connected to %s in %s\n", conn.Peer(), time.Since(start).Round(time.Millisecond))
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	var rs recvStats
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); sendMedia(ctx, conn, cfg.Rate, cfg.Size) }()
	go func() { defer wg.Done(); rs.run(ctx, conn) }()
	tk := time.NewTicker(cfg.Interval)
	defer tk.Stop()
	report := func() {
		st := conn.Stats()
		recv, expected, jitter := rs.snapshot()
		loss := 0.0
		if expected > 0 {
			loss = 100 * float64(expected-recv) / float64(expected)
		}
		printf("%s rtt %s loss %.1f%% jitter %s sent %d recv %d\n", st.Path.Kind, st.Path.RTT.Round(10*time.Microsecond),
			loss, jitter.Round(10*time.Microsecond), st.Sent, recv)
	}
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			report()
			return nil
		case <-tk.C:
			report()
		}
	}
}

// sendMedia sends rate packets a second: seq(4) send-time(8) padding.
func sendMedia(ctx context.Context, c *p2p.Conn, rate, size int) {
	tk := time.NewTicker(time.Second / time.Duration(rate))
	defer tk.Stop()
	buf := make([]byte, size)
	for seq := uint32(0); ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		binary.BigEndian.PutUint32(buf, seq)
		binary.BigEndian.PutUint64(buf[4:], uint64(time.Now().UnixNano()))
		_ = c.WriteDatagram(buf) // ErrNoPath while no path works: media does not wait
	}
}

// recvStats measures what arrives: loss from the sequence numbers, jitter
// as RFC 3550 section 6.4.1's interarrival jitter.
type recvStats struct {
	mu       sync.Mutex // guards the fields below
	recv     uint64
	first    uint32
	max      uint32
	started  bool
	jitter   float64 // nanoseconds
	lastDiff int64
}

func (r *recvStats) run(ctx context.Context, c *p2p.Conn) {
	for {
		p, err := c.ReadDatagram(ctx)
		if err != nil {
			return
		}
		if len(p) < 12 {
			continue
		}
		seq := binary.BigEndian.Uint32(p)
		transit := time.Now().UnixNano() - int64(binary.BigEndian.Uint64(p[4:]))
		r.mu.Lock()
		if !r.started {
			r.started, r.first, r.max = true, seq, seq
		} else {
			d := transit - r.lastDiff
			if d < 0 {
				d = -d
			}
			r.jitter += (float64(d) - r.jitter) / 16
		}
		r.lastDiff = transit
		r.max = max(r.max, seq)
		r.recv++
		r.mu.Unlock()
	}
}

func (r *recvStats) snapshot() (recv, expected uint64, jitter time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.started {
		return 0, 0, 0
	}
	return r.recv, uint64(r.max-r.first) + 1, time.Duration(r.jitter)
}

func init() {
	register(command{name: "call", summary: "a peer-to-peer call through signaling: path, changes, RTT, loss, jitter", run: runCall})
}
