package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/traverse-rtc/traverse/client/nat"
	"github.com/traverse-rtc/traverse/client/portmap"
	"github.com/traverse-rtc/traverse/internal/config"
)

type natcheckConfig struct {
	JSON        bool          `yaml:"json"`
	Local       string        `yaml:"local"`
	Lifetime    bool          `yaml:"lifetime"`
	LifetimeMax time.Duration `yaml:"lifetime-max"`
	RTO         time.Duration `yaml:"rto"`
	Attempts    int           `yaml:"attempts"`

	portmapFlags `yaml:",inline"`
}

func runNatcheck(ctx context.Context, args []string) error { return natcheck(ctx, os.Stdout, args) }

// natcheck runs the command, writing its report to w.
func natcheck(ctx context.Context, w io.Writer, args []string) error {
	var cfg natcheckConfig
	fs := newFlagSet("natcheck", "natcheck [flags] HOST:PORT\n       natcheck --portmap [HOST:PORT]\n\nReports this host's NAT mapping and filtering behaviour, hairpinning and\n(with --lifetime) the UDP binding lifetime, asking an RFC 5780 STUN server\n(traverse stun --other-address, coturn with two listening IPs).\nWith --portmap it also (or only, without HOST:PORT) asks the default\ngateway which port-mapping protocols it offers (PCP, NAT-PMP, UPnP IGD).")
	fs.BoolVar(&cfg.JSON, "json", false, "print the report as JSON")
	fs.StringVar(&cfg.Local, "local", "", "local `IP or IP:port` to send from (default: any)")
	fs.BoolVar(&cfg.Lifetime, "lifetime", false, "also estimate the UDP binding lifetime (slow: up to about twice --lifetime-max)")
	fs.DurationVar(&cfg.LifetimeMax, "lifetime-max", 2*time.Minute, "longest binding lifetime tried")
	fs.DurationVar(&cfg.RTO, "rto", 200*time.Millisecond, "first retransmission timeout (doubles per retransmission)")
	fs.IntVar(&cfg.Attempts, "attempts", 4, "requests per transaction before a test gives up")
	fs.BoolVar(&cfg.Portmap, "portmap", false, "ask the gateway which port mappings it offers (PCP, NAT-PMP, UPnP IGD)")
	fs.StringVar(&cfg.Gateway, "gateway", "", "gateway `IP` for --portmap (default: the default route's next hop)")
	fs.DurationVar(&cfg.Timeout, "portmap-timeout", portmap.DefaultTimeout, "how long --portmap waits for each protocol's answer")
	fs.UintVar(&cfg.pmpPort, "portmap-pmp-port", 0, "gateway's PCP/NAT-PMP port (default 5351; for tests)")
	fs.UintVar(&cfg.ssdpPort, "portmap-ssdp-port", 0, "gateway's SSDP port (default 1900; for tests)")
	rest, err := config.Load(fs, flagsFirst(fs, args), &cfg)
	if err != nil {
		return err
	}
	if cfg.Portmap {
		if err := portmapCheck(ctx, w, cfg.portmapFlags, cfg.JSON); err != nil {
			return err
		}
		if len(rest) == 0 {
			return nil
		}
	}
	if len(rest) != 1 {
		fs.Usage()
		return &exitError{code: 2, err: errors.New("want exactly one argument: the server's HOST:PORT")}
	}
	rep, err := nat.Discover(ctx, nat.Config{
		Server: rest[0], Local: cfg.Local, RTO: cfg.RTO, Attempts: cfg.Attempts,
		Lifetime: cfg.Lifetime, LifetimeMax: cfg.LifetimeMax,
	})
	if err != nil {
		if cfg.JSON {
			fmt.Fprintf(w, "{\"error\": %q, \"udp_blocked\": %t}\n", err.Error(), rep.UDPBlocked)
		}
		return err
	}
	if cfg.JSON {
		_, err = w.Write(rep.JSON())
		return err
	}
	_, err = fmt.Fprint(w, rep.String())
	return err
}

// flagsFirst moves the positional arguments after the flags, so that
// "natcheck HOST:PORT --json" works like "natcheck --json HOST:PORT".
func flagsFirst(fs *flag.FlagSet, args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			continue
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			continue
		}
		if i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	return append(append(flags, "--"), pos...)
}

func init() {
	register(command{name: "natcheck", summary: "discover this host's NAT behaviour with an RFC 5780 STUN server", run: runNatcheck})
}
