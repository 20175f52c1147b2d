package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/traverse-rtc/traverse/internal/admin"
	"github.com/traverse-rtc/traverse/internal/config"
	"github.com/traverse-rtc/traverse/internal/kfast/mediaflow"
	"github.com/traverse-rtc/traverse/internal/mediaproxy"
	"github.com/traverse-rtc/traverse/internal/sipgw"
)

// sipgwConfig is the sipgw role's section: the SIP border gateway and its
// media proxy.
type sipgwConfig struct {
	SIP          string        `yaml:"sip"`
	SIPTCP       bool          `yaml:"sip-tcp"`
	SIPTLS       string        `yaml:"sip-tls"`
	TLSCert      string        `yaml:"tls-cert"`
	TLSKey       string        `yaml:"tls-key"`
	RTP          string        `yaml:"rtp"`
	RTCP         string        `yaml:"rtcp"`
	Upstream     string        `yaml:"upstream"`
	InsideIP     string        `yaml:"inside-ip"`
	InsidePorts  string        `yaml:"inside-ports"`
	InsideNets   []string      `yaml:"inside-net"`
	OutsideIP    string        `yaml:"outside-ip"`
	RandomPorts  bool          `yaml:"random-ports"`
	Offload      string        `yaml:"offload"`
	OffloadAfter int           `yaml:"offload-after"`
	MediaTimeout time.Duration `yaml:"media-timeout"`
	Control      string        `yaml:"control"`
	RateLimit    float64       `yaml:"rate-limit"`
	// The destination policy for outside media (mediaproxy.Config.Policy).
	AllowLoopbackMedia bool          `yaml:"allow-loopback-media"`
	AllowMedia         []string      `yaml:"allow-media"`
	DenyMedia          []string      `yaml:"deny-media"`
	MediaBeforeLatch   bool          `yaml:"media-before-latch"`
	CallRate           float64       `yaml:"call-rate"`
	SourceStrms        int           `yaml:"source-streams"`
	SetupTimeout       time.Duration `yaml:"setup-timeout"`
	AckTimeout         time.Duration `yaml:"ack-timeout"`
	AnswerRate         float64       `yaml:"answer-rate"`
	MaxConns           int           `yaml:"max-conns"`
	MaxConnsPerAddr    int           `yaml:"max-conns-per-addr"`
}

func sipgwFlags(fs *flag.FlagSet, prefix string, c *sipgwConfig) {
	fs.StringVar(&c.SIP, prefix+"sip", c.SIP, "outside SIP `host:port` (UDP), the one signaling port")
	fs.BoolVar(&c.SIPTCP, prefix+"sip-tcp", c.SIPTCP, "also accept SIP over TCP on the --sip address")
	fs.StringVar(&c.SIPTLS, prefix+"sip-tls", c.SIPTLS, "SIP over TLS `host:port` (empty disables it; a fourth outside port)")
	fs.StringVar(&c.TLSCert, prefix+"tls-cert", c.TLSCert, "TLS certificate PEM `file` (empty with --tls-key empty: self-signed, for tests)")
	fs.StringVar(&c.TLSKey, prefix+"tls-key", c.TLSKey, "TLS private key PEM `file`")
	fs.StringVar(&c.RTP, prefix+"rtp", c.RTP, "the one outside RTP `host:port` every call's media goes to")
	fs.StringVar(&c.RTCP, prefix+"rtcp", c.RTCP, "the one outside RTCP `host:port`")
	fs.StringVar(&c.Upstream, prefix+"upstream", c.Upstream, "inside SIP server `host:port` (PBX); requests from it are inside")
	fs.StringVar(&c.InsideIP, prefix+"inside-ip", c.InsideIP, "inside `IP` of the media proxy port pool")
	fs.StringVar(&c.InsidePorts, prefix+"inside-ports", c.InsidePorts, "inside media port pool `LOW-HIGH` (two ports per stream: RTP even, RTCP odd)")
	fs.Var(config.Strings{P: &c.InsideNets}, prefix+"inside-net", "source `prefix` whose SIP requests count as inside besides the upstream (repeatable)")
	fs.StringVar(&c.OutsideIP, prefix+"outside-ip", c.OutsideIP, "`IP` written into outside-bound SDP (default: the --rtp IP)")
	fs.BoolVar(&c.RandomPorts, prefix+"random-ports", c.RandomPorts, "pick a random free inside port pair instead of the next free one")
	fs.StringVar(&c.Offload, prefix+"offload", c.Offload, "kernel fast path for latched flows: ebpf, nftables or off (both need root; nftables also ip_forward, ebpf Linux 6.6+)")
	fs.IntVar(&c.OffloadAfter, prefix+"offload-after", c.OffloadAfter, "packets each way a flow spends in user space before it is offloaded (0: 50)")
	fs.DurationVar(&c.MediaTimeout, prefix+"media-timeout", c.MediaTimeout, "end a call whose media stopped for this `duration` (0: 30s)")
	fs.StringVar(&c.Control, prefix+"control", c.Control, "media proxy control protocol UDP `host:port` for an external signaling proxy (empty disables it; keep it internal)")
	fs.Float64Var(&c.RateLimit, prefix+"rate-limit", c.RateLimit, "new INVITEs+REGISTERs per second allowed per outside source IP (0: 20)")
	bindLoopbackFlag(fs, prefix+"allow-loopback-media", &c.AllowLoopbackMedia,
		"allow outside media addresses on loopback (local tests only; the gateway's own ports stay refused)", prefix != "")
	fs.Var(config.Strings{P: &c.AllowMedia}, prefix+"allow-media", "outside media `CIDR` to allow although refused by default, e.g. the private network of outside phones (repeatable)")
	fs.Var(config.Strings{P: &c.DenyMedia}, prefix+"deny-media", "outside media `CIDR` to refuse always (repeatable)")
	fs.BoolVar(&c.MediaBeforeLatch, prefix+"media-before-latch", c.MediaBeforeLatch, "send media to an outside party's SDP address before its own media arrived (default off: nothing is sent until it sends; only for peers that never send first)")
	fs.Float64Var(&c.CallRate, prefix+"call-rate", c.CallRate, "new calls per second per outside source (IPv4 address or IPv6 /64; burst 4x; 0: 5); raise for trunks")
	fs.IntVar(&c.SourceStrms, prefix+"source-streams", c.SourceStrms, "inside media streams the calls of one outside source may hold at once (0: 100); raise for trunks")
	fs.DurationVar(&c.SetupTimeout, prefix+"setup-timeout", c.SetupTimeout, "cancel a call not answered within this `duration` of its INVITE (0: 60s)")
	fs.DurationVar(&c.AckTimeout, prefix+"ack-timeout", c.AckTimeout, "hang up an answered call whose ACK does not come within this `duration` (0: 8s)")
	fs.IntVar(&c.MaxConns, prefix+"max-conns", c.MaxConns, "connections each of the SIP TCP and TLS listeners holds at once (0: 1024); beyond, new ones are closed")
	fs.IntVar(&c.MaxConnsPerAddr, prefix+"max-conns-per-addr", c.MaxConnsPerAddr, "SIP TCP (and TLS) connections from one source, IPv4 address or IPv6 /64 (0: 32)")
	fs.Float64Var(&c.AnswerRate, prefix+"answer-rate", c.AnswerRate, "refusals per second the gateway answers per outside source (burst 2x; 0: 10); beyond it, silence")
}

// parse turns the section's strings into the roles' typed configurations,
// once: addresses, prefixes and the media destination policy. The media
// proxy's Offloader and the process's shared parts (registry, log) are
// wired by startSipgw.
func (c *sipgwConfig) parse() (mediaproxy.Config, sipgw.Config, error) {
	var m mediaproxy.Config
	var g sipgw.Config
	var err error
	for _, x := range []struct {
		flag, in string
		out      *netip.AddrPort
	}{{"--rtp", c.RTP, &m.RTP}, {"--rtcp", c.RTCP, &m.RTCP}, {"--sip", c.SIP, &g.SIP}, {"--sip-tls", c.SIPTLS, &g.TLS}} {
		if x.in == "" && x.out == &g.TLS {
			continue // TLS off
		}
		parse := netip.ParseAddrPort
		if x.out == &g.SIP || x.out == &g.TLS {
			parse = resolveUDP // listeners took host names before they were typed
		}
		if *x.out, err = parse(x.in); err != nil {
			return m, g, fmt.Errorf("%s: %w", x.flag, err)
		}
	}
	if m.InsideIP, err = netip.ParseAddr(c.InsideIP); err != nil {
		return m, g, fmt.Errorf("--inside-ip: %w", err)
	}
	if m.InsidePorts, err = mediaproxy.ParsePortRange(c.InsidePorts); err != nil {
		return m, g, fmt.Errorf("--inside-ports: %w", err)
	}
	if g.Upstream, err = resolveUDP(c.Upstream); err != nil {
		return m, g, fmt.Errorf("--upstream: %w", err)
	}
	if c.OutsideIP != "" {
		if g.OutsideIP, err = netip.ParseAddr(c.OutsideIP); err != nil {
			return m, g, fmt.Errorf("--outside-ip: %w", err)
		}
	}
	m.Policy.Loopback = c.AllowLoopbackMedia
	for _, x := range []struct {
		flag string
		in   []string
		out  *[]netip.Prefix
	}{{"--inside-net", c.InsideNets, &g.InsideNets}, {"--allow-media", c.AllowMedia, &m.Policy.Allow}, {"--deny-media", c.DenyMedia, &m.Policy.Deny}} {
		for _, s := range x.in {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return m, g, fmt.Errorf("%s %q: %w", x.flag, s, err)
			}
			*x.out = append(*x.out, p)
		}
	}
	m.RandomPorts, m.MediaTimeout, m.OffloadAfter = c.RandomPorts, c.MediaTimeout, uint64(c.OffloadAfter)
	m.SendBeforeLatch = c.MediaBeforeLatch
	g.TCP, g.TLSCert, g.TLSKey = c.SIPTCP, c.TLSCert, c.TLSKey
	g.RateLimit, g.CallRate, g.SourceStreams, g.AnswerRate = c.RateLimit, c.CallRate, c.SourceStrms, c.AnswerRate
	g.MaxConns, g.MaxConnsPerAddr = c.MaxConns, c.MaxConnsPerAddr
	g.SetupTimeout, g.AckTimeout = c.SetupTimeout, c.AckTimeout
	return m, g, nil
}

// resolveUDP parses ip:port, or resolves host:port once (the upstream and
// the listeners may be named; an empty host is the wildcard address).
func resolveUDP(hostport string) (netip.AddrPort, error) {
	if hostport == "" {
		return netip.AddrPort{}, errors.New("host:port required")
	}
	if ap, err := netip.ParseAddrPort(hostport); err == nil {
		return ap, nil
	}
	ua, err := net.ResolveUDPAddr("udp", hostport)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ip, ok := netip.AddrFromSlice(ua.IP)
	if !ok {
		ip = netip.IPv4Unspecified()
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(ua.Port)), nil
}

// newMediaOffloader opens the --offload kernel fast path (nil for off).
func newMediaOffloader(name string) (mediaproxy.Offloader, io.Closer, error) {
	switch name {
	case "", "off":
		return nil, nil, nil
	case "nftables":
		off, err := newNftOffloader()
		if err != nil {
			return nil, nil, err
		}
		return off, off, nil
	case "ebpf":
		off, err := mediaflow.New(mediaflow.Config{})
		if err != nil {
			return nil, nil, err
		}
		return off, off, nil
	default:
		return nil, nil, fmt.Errorf("--offload %q: want ebpf, nftables or off", name)
	}
}

// startSipgw binds the media proxy and the gateway and returns their loop.
func startSipgw(ctx context.Context, c sipgwConfig, env *serveEnv) (runner, error) {
	log := env.log.With("role", "sipgw")
	mcfg, gcfg, err := c.parse()
	if err != nil {
		return nil, err
	}
	if c.AllowLoopbackMedia {
		log.Warn("outside media to loopback addresses allowed: for local tests only")
	}
	mcfg.Registerer, mcfg.Log = env.admin.Registry, log.With("part", "mediaproxy")
	gcfg.Registerer, gcfg.Log = env.admin.Registry, log
	off, offCloser, err := newMediaOffloader(c.Offload)
	if err != nil {
		return nil, err
	}
	mcfg.Offloader = off
	var closers []io.Closer // in closing order
	if offCloser != nil {
		closers = append(closers, offCloser)
	}
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i].Close()
		}
	}
	mp, err := mediaproxy.New(mcfg)
	if err != nil {
		closeAll()
		return nil, err
	}
	closers = append(closers, mp)
	gcfg.Media = mp
	gw, err := sipgw.New(gcfg)
	if err != nil {
		closeAll()
		return nil, err
	}
	if c.Control != "" {
		ctl, err := mediaproxy.ListenControl(mp, c.Control)
		if err != nil {
			gw.Close()
			closeAll()
			return nil, err
		}
		closers = append(closers, ctl)
	}
	log.Info("sipgw listening", "sip", gw.Addr(), "rtp", mp.RTPAddr(), "rtcp", mp.RTCPAddr(), "upstream", c.Upstream, "offload", c.Offload)
	return func(ctx context.Context) error {
		err := gw.Run(ctx)
		closeAll()
		return err
	}, nil
}

type sipgwCmdConfig struct {
	common      `yaml:",inline"`
	sipgwConfig `yaml:",inline"`
}

func runSipgw(ctx context.Context, args []string) error {
	cfg := sipgwCmdConfig{
		common:      common{Admin: "127.0.0.1:9560"},
		sipgwConfig: sipgwConfig{SIP: "0.0.0.0:5060", RTP: "", RTCP: "", InsidePorts: "30000-39999", Offload: "off"},
	}
	fs := newFlagSet("sipgw", "sipgw --sip ADDR --rtp ADDR --rtcp ADDR --upstream HOST:PORT --inside-ip IP --inside-ports LOW-HIGH [flags]")
	cfg.flags(fs)
	sipgwFlags(fs, "", &cfg.sipgwConfig)
	log, err := loadFlags(fs, args, &cfg, &cfg.common)
	if err != nil {
		return err
	}
	adm := admin.New(log)
	env := &serveEnv{log: log, admin: adm}
	run, err := startSipgw(ctx, cfg.sipgwConfig, env)
	if err != nil {
		return err
	}
	return runWithAdmin(ctx, log, adm, &cfg.common, run)
}

func init() {
	register(command{name: "sipgw", summary: "SIP border gateway: one SIP, one RTP and one RTCP port for any number of calls", run: runSipgw})
	registerServeRole(serveRole{
		name:  "sipgw",
		order: 60,
		bind: func(fs *flag.FlagSet, prefix string) any {
			cfg := &sipgwConfig{SIP: "127.0.0.1:5060", RTP: "127.0.0.1:7000", RTCP: "127.0.0.1:7001",
				Upstream: "127.0.0.1:5080", InsideIP: "127.0.0.1", InsidePorts: "30000-39999", Offload: "off",
				AllowLoopbackMedia: true}
			sipgwFlags(fs, prefix, cfg)
			return cfg
		},
		start: func(ctx context.Context, env *serveEnv) (runner, error) {
			cfg := *env.cfg["sipgw"].(*sipgwConfig)
			cfg.MaxConns = env.budgeted("sipgw", cfg.MaxConns, sipgw.DefaultMaxConns)
			return startSipgw(ctx, cfg, env)
		},
	})
}
